//! Query-log ingest: the server's JSONL ([`crate::store::querylog::LogLine`]). Each answer line
//! becomes a `validator` sample (when the image decodes) and a prediction row; each shadow line a
//! `shadow_scores` row. Malformed lines are skipped with their line number; a record whose bytes do
//! not match its hash is never stored.

use std::io::{BufRead, BufReader};
use std::path::Path;

use rayon::prelude::*;

use super::batch::{Item, Writer};
use super::{IngestError, IngestSummary, Ingestor, image_facts};
use crate::store::RunKind;
use crate::store::querylog::{LogLine, ShadowRecord};
use crate::store::{Era, PredictionRow, SampleId, SampleRow, SampleSource, ShadowRow};

/// Lines parsed and decoded per parallel step.
const CHUNK: usize = 32;

impl Ingestor {
    /// Ingests one JSONL query log.
    pub async fn ingest_querylog(&self, path: &Path) -> Result<IngestSummary, IngestError> {
        let file = std::fs::File::open(path).map_err(|source| IngestError::Io {
            path: path.into(),
            source,
        })?;
        let input = path.display().to_string();
        let params = serde_json::json!({ "file": input });
        let mut w = Writer::start(
            &self.store,
            &self.cfg,
            RunKind::IngestQuerylog,
            input,
            params,
        )
        .await?;
        let bar = self.bar(0, "querylog");
        // Lines as bytes: one line that is not UTF-8 is skipped like any malformed line, and
        // never stops the lines after it.
        let mut lines = BufReader::new(file).split(b'\n').enumerate();
        let mut not_text = Vec::new();
        loop {
            let mut chunk = Vec::with_capacity(CHUNK);
            for (i, line) in lines.by_ref() {
                match line.map(String::from_utf8) {
                    Ok(Ok(l)) if l.trim().is_empty() => continue,
                    Ok(Ok(l)) => chunk.push((i + 1, l)),
                    Ok(Err(_)) => not_text.push(i + 1),
                    Err(e) => {
                        let err = IngestError::Io {
                            path: path.into(),
                            source: e,
                        };
                        return Err(w.fail(err).await);
                    }
                }
                if chunk.len() == CHUNK {
                    break;
                }
            }
            for n in not_text.drain(..) {
                w.summary.scanned += 1;
                w.skip(format!("{}:{n}", path.display()), "line is not UTF-8 text");
            }
            if chunk.is_empty() {
                break;
            }
            let limits = self.limits;
            let prepared = tokio::task::spawn_blocking(move || {
                chunk
                    .into_par_iter()
                    .map(|(n, line)| {
                        let parsed = LogLine::parse(&line).map(|l| match l {
                            LogLine::Answer(rec, bytes) => {
                                let facts = image_facts(&bytes, &limits);
                                Ok((rec, bytes, facts))
                            }
                            LogLine::Shadow(s) => Err(Box::new(s)),
                        });
                        (n, parsed)
                    })
                    .collect::<Vec<_>>()
            })
            .await;
            let prepared = match prepared {
                Ok(p) => p,
                Err(e) => return Err(w.fail(IngestError::Task(e.to_string())).await),
            };
            for (n, parsed) in prepared {
                w.summary.scanned += 1;
                bar.inc(1);
                let (rec, bytes, facts) = match parsed {
                    Ok(Ok(x)) => x,
                    Ok(Err(shadow)) => {
                        let item = Item {
                            shadow: Some(shadow_row(*shadow)),
                            ..Default::default()
                        };
                        if let Err(e) = w.push(item).await {
                            return Err(w.fail(e).await);
                        }
                        continue;
                    }
                    Err(e) => {
                        w.skip(format!("{}:{n}", path.display()), e.to_string());
                        continue;
                    }
                };
                let sample_id = match rec.image_cut {
                    None => SampleId::of_bytes(&bytes),
                    Some(_) => match rec.image_sha256.parse() {
                        Ok(id) => id,
                        Err(_) => {
                            w.skip(format!("{}:{n}", path.display()), "bad image_sha256");
                            continue;
                        }
                    },
                };
                let prediction = PredictionRow {
                    request_id: rec.request_id.clone(),
                    sample_id: sample_id.clone(),
                    model_version: rec.model_version.clone(),
                    tier: rec.decided_by,
                    score_tier1: rec.tier_score(1),
                    score_tier2: rec.tier_score(2),
                    final_score: rec.final_score,
                    latency_ms: rec.latency_ms,
                    ts: rec.answered_at,
                    validator: rec.validator_hotkey.clone(),
                };
                // A record whose image was cut (junk payload, disk floor) has no sample: the
                // bytes kept are not the image.
                let facts = facts.ok().filter(|_| rec.image_cut.is_none());
                let quality = facts.as_ref().map(|f| f.quality);
                let sample = facts.map(|f| SampleRow {
                    sample_id,
                    width: f.width,
                    height: f.height,
                    format: f.format.into(),
                    source: if rec.unverified {
                        SampleSource::Unverified
                    } else {
                        SampleSource::Validator
                    }
                    .as_str()
                    .into(),
                    source_ref: rec
                        .validator_hotkey
                        .clone()
                        .unwrap_or_else(|| format!("local:{}", rec.profile)),
                    era: Era::of_query(rec.received_at, f.width, f.height, f.letterboxed)
                        .as_str()
                        .into(),
                    tags: vec![format!("profile={}", rec.profile)],
                    phash: f.phash,
                    received_at: rec.received_at,
                    image: bytes,
                });
                let item = Item {
                    sample,
                    prediction: Some(prediction),
                    quality,
                    ..Default::default()
                };
                if let Err(e) = w.push(item).await {
                    return Err(w.fail(e).await);
                }
            }
        }
        bar.finish_and_clear();
        w.finish().await
    }
}

fn shadow_row(s: ShadowRecord) -> ShadowRow {
    ShadowRow {
        request_id: s.request_id,
        sample_id: s.image_sha256,
        champion_version: s.champion_version,
        champion_score: s.champion_score,
        challenger_version: s.challenger_version,
        challenger_score: s.challenger_score,
        tier1_ms: s.tier1_ms,
        champion_head_ms: s.champion_head_ms,
        challenger_head_ms: s.challenger_head_ms,
        ts: s.scored_at,
        validator: s.validator_hotkey,
    }
}
