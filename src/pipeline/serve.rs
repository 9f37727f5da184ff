//! `roadwork serve` as a pipeline: the serving stage answers and logs; this composition moves its
//! sealed query-log segments into Lance (through the query-log ingest, which is idempotent) in
//! the background, and once more on shutdown.

use std::sync::Arc;
use std::time::Duration;

use super::PipelineError;
use crate::config::Config;
use crate::ingest::Ingestor;
use crate::serve::{QueryLog, Running, ServeConfig};
use crate::store::Store;
use crate::train::Registry;

/// What one pass of the mover did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MoveSummary {
    pub segments: usize,
    /// Lines accepted (answers and shadow lines).
    pub records: usize,
    /// Images not in the store before.
    pub new_samples: u64,
    pub predictions: u64,
    pub shadow_scores: u64,
    /// Lines that could not be used, kept in `bad/` beside the log.
    pub quarantined: usize,
    /// Segments whose ingest failed (left sealed, retried on the next pass).
    pub failed: usize,
}

/// The 1-based line numbers an ingest skipped, from its `path:line` items.
fn skipped_lines(r: &crate::ingest::IngestSummary) -> std::collections::BTreeSet<usize> {
    r.skipped
        .iter()
        .filter_map(|s| s.item.rsplit(':').next()?.parse().ok())
        .collect()
}

/// Seals the active segment and ingests every sealed one; a segment is marked done only after
/// its ingest committed and the store was synced to disk, so a crash or a power loss in between
/// re-ingests it (adding nothing), and a segment in `done/` always has its rows on disk. Lines that cannot
/// be used are copied to `bad/` and the segment still moves; a segment whose ingest fails (the
/// store unreachable, say) stays sealed for the next pass and the segments after it still move.
pub async fn move_querylog(
    log: &QueryLog,
    ingestor: &Ingestor,
) -> Result<MoveSummary, PipelineError> {
    log.seal_active()
        .map_err(|e| PipelineError::Task(format!("sealing the query log: {e}")))?;
    let mut s = MoveSummary::default();
    let segments = log
        .sealed()
        .map_err(|e| PipelineError::Task(format!("listing the query log: {e}")))?;
    let mut first_error = None;
    let mut ingested = Vec::new();
    for seg in segments {
        let r = match ingestor.ingest_querylog(&seg).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(segment = %seg.display(), "query-log segment not moved: {e}");
                s.failed += 1;
                first_error.get_or_insert(e.to_string());
                continue;
            }
        };
        let bad = skipped_lines(&r);
        if !bad.is_empty() {
            let bytes = std::fs::read(&seg)
                .map_err(|e| PipelineError::Task(format!("{}: {e}", seg.display())))?;
            let lines: Vec<Vec<u8>> = bytes
                .split(|b| *b == b'\n')
                .enumerate()
                .filter(|(i, _)| bad.contains(&(i + 1)))
                .map(|(_, l)| l.to_vec())
                .collect();
            let to = log
                .quarantine(&seg, &lines)
                .map_err(|e| PipelineError::Task(format!("quarantining {}: {e}", seg.display())))?;
            tracing::warn!(segment = %seg.display(), lines = lines.len(), kept = %to.display(), "query-log lines quarantined");
            s.quarantined += lines.len();
        }
        ingested.push((seg, r));
    }
    // "Moved" means durable: the rows of every ingested segment reach stable storage (one sync
    // for the pass) before any of them leaves; without it they all stay sealed for the next pass.
    if !ingested.is_empty()
        && let Err(e) = ingestor.store().sync().await
    {
        tracing::error!(
            segments = ingested.len(),
            "store not synced; segments kept: {e}"
        );
        s.failed += ingested.len();
        first_error.get_or_insert(e.to_string());
        ingested.clear();
    }
    for (seg, r) in ingested {
        log.mark_done(&seg)
            .map_err(|e| PipelineError::Task(format!("retiring {}: {e}", seg.display())))?;
        s.segments += 1;
        s.records += r.accepted;
        s.new_samples += r.new_samples;
        s.predictions += r.predictions_written;
        s.shadow_scores += r.shadow_scores_written;
    }
    if s.segments == 0
        && let Some(e) = first_error
    {
        return Err(PipelineError::Task(format!(
            "no query-log segment moved: {e}"
        )));
    }
    Ok(s)
}

/// Starts the server and the mover; returns the running server (the caller waits for a signal
/// and then calls [`stop`]).
pub async fn start(
    cfg: &Config,
    sc: &ServeConfig,
) -> Result<(Running, tokio::task::JoinHandle<()>), PipelineError> {
    let registry = Registry::open(cfg.train.registry_dir(&cfg.data.dir))?;
    let qdir = sc
        .querylog_dir
        .clone()
        .unwrap_or_else(|| cfg.data.dir.join("querylog"));
    let running = crate::serve::start(sc, &cfg.embed, cfg.decode, registry, &qdir).await?;
    let store = Store::open(&cfg.data.store_uri()).await?;
    let ingestor = Ingestor::new(store, cfg.ingest.clone(), cfg.decode).quiet();
    let log: Arc<QueryLog> = running.querylog.clone();
    let every = Duration::from_secs(sc.ingest_every_s.max(1));
    let mover = tokio::spawn(async move {
        loop {
            match move_querylog(&log, &ingestor).await {
                Ok(m) if m.records > 0 => {
                    tracing::info!(
                        segments = m.segments,
                        records = m.records,
                        "query log moved into Lance"
                    )
                }
                Ok(_) => {}
                // Lance slow or down: the log keeps growing on disk and is retried next period.
                Err(e) => tracing::warn!("query log not moved yet: {e}"),
            }
            tokio::time::sleep(every).await;
        }
    });
    Ok((running, mover))
}

/// Drains the server, stops the mover, and moves what is left.
pub async fn stop(
    cfg: &Config,
    running: Running,
    mover: tokio::task::JoinHandle<()>,
) -> Result<MoveSummary, PipelineError> {
    let log = running.querylog.clone();
    running.shutdown().await;
    mover.abort();
    let store = Store::open(&cfg.data.store_uri()).await?;
    let ingestor = Ingestor::new(store, cfg.ingest.clone(), cfg.decode).quiet();
    move_querylog(&log, &ingestor).await
}
