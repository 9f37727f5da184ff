//! `roadwork teach`: the VLM of `[serve.tier2]` (the same client the serving cascade uses) labels
//! samples. An answer with P(yes) or P(no) at or above `teach.min_confidence` becomes a `teacher`
//! label, authored by the model name, with that probability as its confidence; anything less
//! sure is counted and left unlabelled.
//!
//! Cost control: at most `budget` requests per run, `max_concurrent` at once, each bounded by
//! `timeout_ms`. A failed request (timeout, HTTP error, an answer that is neither yes nor no) is
//! skipped and counted; it never fails the run. Samples that already carry a label from a person,
//! a dataset, or this teacher are not asked again, so a re-run spends nothing on them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::LabelsError;
use crate::serve::{Tier2, Tier2Config};
use crate::store::{
    Label, LabelRow, LabelSource, RunKind, RunLedger, RunStatus, SampleId, Store, tables,
};

/// `[teach]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeachConfig {
    /// P(yes) or P(no) at least this → a teacher label.
    pub min_confidence: f32,
    /// Requests per run at most.
    pub budget: usize,
    /// Requests in flight at most.
    pub max_concurrent: usize,
    /// Per-request limit, milliseconds (offline, so far longer than the serving deadline).
    pub timeout_ms: u64,
}

impl Default for TeachConfig {
    fn default() -> Self {
        Self {
            min_confidence: 0.9,
            budget: 500,
            max_concurrent: 4,
            timeout_ms: 30_000,
        }
    }
}

impl TeachConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.min_confidence > 0.5 && self.min_confidence <= 1.0) {
            return Err("teach.min_confidence must be in (0.5, 1]".into());
        }
        if self.max_concurrent == 0 || self.timeout_ms == 0 {
            return Err("teach.max_concurrent and teach.timeout_ms must be at least 1".into());
        }
        Ok(())
    }
}

/// Which samples to ask about.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TeachTargets {
    /// A stored selection, in rank order.
    Selection(String),
    /// The `n` hardest unlabelled samples of the latest successful mining run.
    Hard(usize),
}

/// What a teach run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TeachSummary {
    pub run_id: String,
    pub model: String,
    /// Candidates named by the targets.
    pub candidates: usize,
    /// Skipped: already labelled by a person, a dataset or this teacher.
    pub already_labelled: usize,
    /// Requests sent (at most the budget).
    pub asked: usize,
    /// Left unasked because the budget ran out.
    pub over_budget: usize,
    pub roadwork: usize,
    pub clean: usize,
    /// Answers below `min_confidence` either way.
    pub unsure: usize,
    /// Requests that failed, by kind (`timeout`, `http_error`, `unreachable`, `garbage`).
    pub failed: HashMap<String, usize>,
    pub inserted: u64,
    pub updated: u64,
}

impl std::fmt::Display for TeachSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let failed: usize = self.failed.values().sum();
        writeln!(
            f,
            "teach ({}): {} candidates, {} already labelled, asked {} ({} over budget): {} roadwork, {} clean, {} unsure, {} failed{}; {} labels written (run {})",
            self.model,
            self.candidates,
            self.already_labelled,
            self.asked,
            self.over_budget,
            self.roadwork,
            self.clean,
            self.unsure,
            failed,
            if self.failed.is_empty() {
                String::new()
            } else {
                format!(" {:?}", self.failed)
            },
            self.inserted + self.updated,
            self.run_id
        )
    }
}

/// The teacher stage.
pub struct Teacher {
    store: Store,
    vlm: Arc<Tier2>,
    cfg: TeachConfig,
}

impl Teacher {
    /// A teacher asking the endpoint of `vlm` (`[serve.tier2]`); its own concurrency limit
    /// replaces the serving one.
    pub fn new(store: Store, vlm: Tier2Config, cfg: TeachConfig) -> Result<Self, LabelsError> {
        cfg.validate().map_err(LabelsError::Teach)?;
        let vlm = Tier2::new(Tier2Config {
            max_concurrent: cfg.max_concurrent,
            ..vlm
        })
        .map_err(LabelsError::Teach)?;
        Ok(Self {
            store,
            vlm: Arc::new(vlm),
            cfg,
        })
    }

    /// Asks about `targets` and writes the confident answers (one commit), recording the run.
    pub async fn teach(&self, targets: &TeachTargets) -> Result<TeachSummary, LabelsError> {
        let params = serde_json::json!({
            "targets": targets,
            "model": self.vlm.cfg.model,
            "config": self.cfg,
        });
        let mut run = RunLedger::start(&self.store, RunKind::Teach, params).await?;
        let result = self.run_stage(targets, &mut run).await;
        run.close(result).await
    }

    async fn run_stage(
        &self,
        targets: &TeachTargets,
        run: &mut RunLedger,
    ) -> Result<TeachSummary, LabelsError> {
        let model = self.vlm.cfg.model.clone();
        let candidates = match targets {
            TeachTargets::Selection(name) => {
                let rows = self.store.selection(name).await?;
                if rows.is_empty() {
                    return Err(LabelsError::NoSelection(name.clone()));
                }
                rows.into_iter().map(|r| r.sample_id).collect::<Vec<_>>()
            }
            TeachTargets::Hard(n) => self.hardest_unlabelled(*n).await?,
        };
        let labelled: HashSet<String> = self
            .store
            .labels()
            .await?
            .into_iter()
            .filter(|l| match l.source {
                LabelSource::Human | LabelSource::Dataset => true,
                LabelSource::Teacher => l.author == model,
                LabelSource::Synthetic => false,
            })
            .map(|l| l.sample_id.to_string())
            .collect();
        let mut s = TeachSummary {
            run_id: run.id().to_string(),
            model: model.clone(),
            candidates: candidates.len(),
            ..TeachSummary::default()
        };
        let todo: Vec<String> = candidates
            .into_iter()
            .filter(|id| {
                let skip = labelled.contains(id);
                s.already_labelled += usize::from(skip);
                !skip
            })
            .collect();
        s.over_budget = todo.len().saturating_sub(self.cfg.budget);
        let todo: Vec<String> = todo.into_iter().take(self.cfg.budget).collect();
        s.asked = todo.len();
        let timeout = Duration::from_millis(self.cfg.timeout_ms);
        let mut rows = Vec::new();
        // Images are fetched a chunk at a time, so memory stays bounded by the chunk.
        for chunk in todo.chunks(64) {
            let list: Vec<String> = chunk.iter().map(|i| format!("'{i}'")).collect();
            let samples = self
                .store
                .samples(Some(&format!("sample_id IN ({})", list.join(","))))
                .await?;
            let answers: Vec<(SampleId, Result<f32, String>)> =
                futures::stream::iter(samples.into_iter().map(|smp| {
                    let vlm = self.vlm.clone();
                    async move {
                        let a = vlm.ask(&smp.image, timeout).await;
                        (
                            smp.sample_id,
                            a.map(|a| a.p_yes).map_err(|e| e.kind().to_string()),
                        )
                    }
                }))
                .buffer_unordered(self.cfg.max_concurrent)
                .collect()
                .await;
            for (id, a) in answers {
                let p = match a {
                    Ok(p) if p.is_finite() => p.clamp(0.0, 1.0),
                    Ok(_) => {
                        *s.failed.entry("garbage".into()).or_default() += 1;
                        continue;
                    }
                    Err(kind) => {
                        *s.failed.entry(kind).or_default() += 1;
                        continue;
                    }
                };
                let (label, confidence) = if p >= self.cfg.min_confidence {
                    s.roadwork += 1;
                    (Label::Roadwork, p)
                } else if 1.0 - p >= self.cfg.min_confidence {
                    s.clean += 1;
                    (Label::Clean, 1.0 - p)
                } else {
                    s.unsure += 1;
                    continue;
                };
                rows.push(LabelRow {
                    sample_id: id,
                    label,
                    source: LabelSource::Teacher,
                    confidence,
                    author: model.clone(),
                    ts: chrono::Utc::now(),
                });
            }
        }
        if !rows.is_empty() {
            let w = self.store.put_labels(&rows).await?;
            run.wrote(tables::LABELS, &w);
            s.inserted = w.inserted;
            s.updated = w.updated;
        }
        Ok(s)
    }

    /// The `n` hardest samples of the latest successful mining run that have no label.
    async fn hardest_unlabelled(&self, n: usize) -> Result<Vec<String>, LabelsError> {
        let runs = self.store.runs().await?;
        let Some(mine) = runs
            .iter()
            .rev()
            .find(|r| r.kind == RunKind::Mine && r.status == RunStatus::Ok)
        else {
            return Err(LabelsError::Teach(
                "--hard needs a mining run; run `roadwork mine run` first".into(),
            ));
        };
        let labelled: HashSet<String> = self
            .store
            .effective_labels()
            .await?
            .into_iter()
            .map(|l| l.sample_id.to_string())
            .collect();
        let filter = format!("run_id = '{}'", mine.run_id);
        let mut scored: Vec<(String, f32)> = self
            .store
            .id_values(tables::MINE_SCORES, "sample_id", "hardness", Some(&filter))
            .await?
            .into_iter()
            .filter(|(id, _)| !labelled.contains(id))
            .map(|(id, h)| (id, h.unwrap_or(0.0)))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(scored.into_iter().take(n).map(|(id, _)| id).collect())
    }
}
