//! The synthesis stage: `load` → `plan` (pure) → `generate` (async, bounded concurrency, a
//! hard budget) → `check` (blocking) → `write` (one commit per table) → audit, report and the
//! run's ledger row.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use serde::Serialize;

use super::SynthError;
use super::audit::{AuditRow, domain_auc};
use super::backend::{Backend, GenError};
use super::check::{Candidate, Verdict, check, context};
use super::config::SynthConfig;
use super::load::{Loaded, load};
use super::plan::{Job, Plan, make_plan, micro_usd};
use crate::embed::ImageEncoder;
use crate::store::{
    Label, RunKind, RunLedger, SampleId, SampleSource, Store, SynthImageRow, SynthStatus, tables,
};
use crate::train::{Split, SplitConfig};

/// A hard budget shared by concurrent calls: a call reserves its price before it is sent and
/// the reservation is kept only if the call is billed, so the total never passes the limits.
#[derive(Debug)]
pub struct Budget {
    max_images: usize,
    max_micro_usd: u64,
    used: Mutex<(usize, u64)>,
}

/// A granted reservation.
#[derive(Debug)]
#[must_use]
pub struct Reservation {
    micro_usd: u64,
}

impl Budget {
    pub fn new(max_images: usize, max_usd: f64) -> Self {
        Self {
            max_images,
            max_micro_usd: micro_usd(max_usd),
            used: Mutex::new((0, 0)),
        }
    }

    /// Reserves one image at `price_usd`, or `None` when it would pass either limit.
    pub fn reserve(&self, price_usd: f64) -> Option<Reservation> {
        let p = micro_usd(price_usd);
        let mut u = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if u.0 + 1 > self.max_images || u.1 + p > self.max_micro_usd {
            return None;
        }
        u.0 += 1;
        u.1 += p;
        Some(Reservation { micro_usd: p })
    }

    /// Gives back a reservation whose call was not billed.
    pub fn release(&self, r: Reservation) {
        let mut u = self.used.lock().unwrap_or_else(|e| e.into_inner());
        u.0 = u.0.saturating_sub(1);
        u.1 = u.1.saturating_sub(r.micro_usd);
    }

    /// Images and dollars spent so far.
    pub fn spent(&self) -> (usize, f64) {
        let u = self.used.lock().unwrap_or_else(|e| e.into_inner());
        (u.0, u.1 as f64 / 1e6)
    }
}

/// One gap's outcome.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct GapOutcome {
    pub gap: String,
    pub why: String,
    pub asked: usize,
    pub generated: usize,
    pub accepted: usize,
    /// Refusals by reason kind (`duplicate`, `leak`, `missed gap`, `cap`, `filtered`, …).
    pub rejected: BTreeMap<String, usize>,
    pub spent_usd: f64,
    /// Labelled training members of the gap before, and after adding the accepted images made
    /// for it (each passed the gap's landing check).
    pub members_before: usize,
    pub members_after: usize,
    /// Coverage before and after: a cluster's share of the training data; a stratum's minority
    /// class share.
    pub before: Option<f64>,
    pub after: Option<f64>,
    /// What it should approach: an under-covered cluster's traffic share; 0.5 for a stratum.
    pub goal: Option<f64>,
}

impl GapOutcome {
    /// `train members 12 → 20, share 4.3% → 6.8% (traffic 58.0%)`, or for a stratum the
    /// minority class's share.
    pub fn coverage(&self) -> String {
        let (Some(b), Some(a)) = (self.before, self.after) else {
            return String::new();
        };
        let what = if self.gap.starts_with("imbalance") {
            "minority share"
        } else {
            "share"
        };
        let goal = match self.goal {
            Some(g) if self.gap.starts_with("imbalance") => format!(" (goal {:.0}%)", 100.0 * g),
            Some(g) => format!(" (traffic {:.1}%)", 100.0 * g),
            None => String::new(),
        };
        format!(
            "train members {} → {}, {what} {:.1}% → {:.1}%{goal}",
            self.members_before,
            self.members_after,
            100.0 * b,
            100.0 * a
        )
    }
}

/// What a synthesis run did.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct SynthSummary {
    pub run_id: String,
    pub mine_run: String,
    pub backend: String,
    pub embedding_model: String,
    pub planned: usize,
    pub already_done: usize,
    pub over_budget: usize,
    /// Calls made (each reserved its price first).
    pub sent: usize,
    pub accepted: usize,
    pub accepted_roadwork: usize,
    pub accepted_clean: usize,
    /// Every refusal, filter and failure by reason kind.
    pub not_accepted: BTreeMap<String, usize>,
    pub images_billed: usize,
    pub spent_usd: f64,
    pub gaps: Vec<GapOutcome>,
    pub audit: Vec<AuditRow>,
    pub flagged_clusters: Vec<u32>,
    pub samples_written: u64,
    pub labels_written: u64,
    pub report: Option<PathBuf>,
    pub notes: Vec<String>,
}

impl std::fmt::Display for SynthSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "synth ({} backend, mining run {}): {} planned ({} done before, {} over budget), {} sent, {} accepted ({} roadwork, {} clean), ${:.2} spent on {} images (run {})",
            self.backend,
            self.mine_run,
            self.planned,
            self.already_done,
            self.over_budget,
            self.sent,
            self.accepted,
            self.accepted_roadwork,
            self.accepted_clean,
            self.spent_usd,
            self.images_billed,
            self.run_id
        )?;
        if !self.not_accepted.is_empty() {
            let parts: Vec<String> = self
                .not_accepted
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            writeln!(f, "  not accepted: {}", parts.join(", "))?;
        }
        for g in &self.gaps {
            writeln!(
                f,
                "  {:<28} asked {:>3}, made {:>3}, accepted {:>3}  {}",
                g.gap,
                g.asked,
                g.generated,
                g.accepted,
                g.coverage()
            )?;
        }
        for a in self.audit.iter().filter(|a| a.flagged) {
            writeln!(
                f,
                "  shortcut: cluster {} synthetic vs real AUC {:.2} — a head could learn \"synthetic\"",
                a.cluster.map_or("all".into(), |c| c.to_string()),
                a.auc.unwrap_or(0.0)
            )?;
        }
        if let Some(r) = &self.report {
            writeln!(f, "  report: {}", r.display())?;
        }
        Ok(())
    }
}

/// A job that produced no image, and why.
#[derive(Debug, Clone)]
struct NoImage {
    job: Job,
    /// `filtered`, `throttled`, `timeout`, …, `skipped`, or [`OVER_BUDGET`].
    kind: String,
    status: SynthStatus,
    detail: String,
    cost: f64,
}

/// What one call gave.
enum Sent {
    Image(Candidate),
    Nothing(NoImage),
}

/// Jobs the run-time budget stopped: not sent, not recorded (a later run may send them).
const OVER_BUDGET: &str = "over-budget";

/// The reason kind: the text before the first `:`.
fn kind_of(reason: &str) -> String {
    reason
        .split(':')
        .next()
        .unwrap_or(reason)
        .trim()
        .to_string()
}

/// The synthesis stage on a store.
pub struct Synthesizer {
    store: Store,
    cfg: SynthConfig,
    split: SplitConfig,
    backend: Arc<dyn Backend>,
    encoder: Arc<dyn ImageEncoder>,
    report_dir: Option<PathBuf>,
    progress: bool,
}

impl Synthesizer {
    /// A stage with its generator and the encoder that made the mining run's embeddings.
    pub fn new(
        store: Store,
        cfg: SynthConfig,
        split: SplitConfig,
        backend: Arc<dyn Backend>,
        encoder: Arc<dyn ImageEncoder>,
    ) -> Result<Self, SynthError> {
        cfg.validate().map_err(SynthError::Config)?;
        Ok(Self {
            store,
            cfg,
            split,
            backend,
            encoder,
            report_dir: None,
            progress: false,
        })
    }

    /// Writes the Markdown + HTML report under `dir`.
    pub fn with_report_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.report_dir = Some(dir.into());
        self
    }

    /// Shows a progress bar while generating.
    pub fn with_progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// The plan alone: what would be generated and what it would cost.
    pub async fn plan(&self) -> Result<Plan, SynthError> {
        plan(&self.store, &self.cfg, &self.split).await
    }

    /// Plans, generates, checks and writes; records the run.
    pub async fn run(&self) -> Result<SynthSummary, SynthError> {
        let params = serde_json::json!({"config": self.cfg, "backend": self.backend.name()});
        let mut run = RunLedger::start(&self.store, RunKind::Synth, params).await?;
        let result = self.run_stage(&mut run).await;
        run.close(result).await
    }

    async fn run_stage(&self, run: &mut RunLedger) -> Result<SynthSummary, SynthError> {
        let loaded = load(&self.store, self.cfg.mine_run.as_deref(), &self.split).await?;
        if loaded.plan.embedding_model != self.encoder.model_id() {
            return Err(SynthError::EncoderMismatch {
                mined: loaded.plan.embedding_model.clone(),
                encoder: self.encoder.model_id().to_string(),
            });
        }
        run.read_all(&loaded.versions);
        let plan = make_plan(&self.cfg, &loaded.plan);
        let mut s = SynthSummary {
            run_id: run.id().to_string(),
            mine_run: plan.mine_run.clone(),
            backend: self.backend.name().to_string(),
            embedding_model: plan.embedding_model.clone(),
            planned: plan.jobs.len(),
            already_done: plan.already_done,
            over_budget: plan.over_budget,
            notes: plan.notes.clone(),
            ..SynthSummary::default()
        };
        let budget = Budget::new(self.cfg.max_images, self.cfg.max_usd);
        let (candidates, mut failed) = self.generate(&plan.jobs, &budget).await?;
        let unsent = failed.iter().filter(|f| f.kind == OVER_BUDGET).count();
        failed.retain(|f| f.kind != OVER_BUDGET);
        s.over_budget += unsent;
        s.sent = candidates.len() + failed.iter().filter(|f| f.kind != "skipped").count();
        let (images, usd) = budget.spent();
        s.images_billed = images;
        s.spent_usd = usd;
        // Checks on a blocking thread: decode, hashes, embeddings, nearest neighbours.
        let loaded = Arc::new(loaded);
        let gaps = plan.gaps.clone();
        let (cfg, enc, l) = (self.cfg.clone(), self.encoder.clone(), loaded.clone());
        let backend = self.backend.name();
        let verdicts = tokio::task::spawn_blocking(move || {
            let ctx = context(&l, &gaps, &cfg.checks, cfg.label_confidence, backend);
            check(&ctx, enc.as_ref(), candidates)
        })
        .await
        .map_err(|e| SynthError::Task(e.to_string()))??;
        // Write: samples, labels, embeddings, then the jobs (so a job is only recorded once its
        // image is stored).
        let run_id = run.id().to_string();
        let now = chrono::Utc::now();
        let samples: Vec<_> = verdicts.iter().filter_map(|v| v.sample.clone()).collect();
        let labels: Vec<_> = verdicts.iter().filter_map(|v| v.label.clone()).collect();
        let vectors: Vec<(SampleId, Vec<f32>)> = verdicts
            .iter()
            .filter_map(|v| Some((v.sample.as_ref()?.sample_id.clone(), v.vector.clone()?)))
            .collect();
        if !samples.is_empty() {
            let w = self.store.insert_samples(&samples).await?;
            run.wrote(tables::SAMPLES, &w);
            s.samples_written = w.inserted;
        }
        if !labels.is_empty() {
            let w = self.store.put_labels(&labels).await?;
            run.wrote(tables::LABELS, &w);
            s.labels_written = w.inserted + w.updated;
        }
        if !vectors.is_empty() {
            let model = self.encoder.model_id().to_string();
            let w = self
                .store
                .put_embeddings(&model, self.encoder.dim(), &vectors)
                .await?;
            run.wrote(&crate::store::embeddings_table(&model), &w);
        }
        let mut rows: Vec<SynthImageRow> = verdicts
            .iter()
            .map(|v| job_row(&v.job, &run_id, self.backend.name(), v, now))
            .collect();
        rows.extend(failed.iter().map(|f| {
            let job = &f.job;
            let v = Verdict {
                job: job.clone(),
                model_id: job.model.id.clone(),
                cost_usd: f.cost,
                status: f.status,
                reason: format!("{}: {}", f.kind, f.detail),
                sample_id: None,
                distance: None,
                land_limit: None,
                nearest_cluster: None,
                sample: None,
                label: None,
                vector: None,
                thumbnail: None,
            };
            job_row(job, &run_id, self.backend.name(), &v, now)
        }));
        if !rows.is_empty() {
            let w = self.store.put_synth_images(&rows).await?;
            run.wrote(tables::SYNTH_IMAGES, &w);
        }
        // Counts, coverage, audit.
        for v in &verdicts {
            if v.status == SynthStatus::Accepted {
                s.accepted += 1;
                match v.job.label {
                    Label::Roadwork => s.accepted_roadwork += 1,
                    Label::Clean => s.accepted_clean += 1,
                }
            } else {
                *s.not_accepted.entry(kind_of(&v.reason)).or_default() += 1;
            }
        }
        for f in &failed {
            *s.not_accepted.entry(f.kind.clone()).or_default() += 1;
        }
        s.gaps = outcomes(&plan, &loaded, &verdicts, &failed);
        s.audit = audit(&loaded, &verdicts, &self.cfg);
        s.flagged_clusters = s
            .audit
            .iter()
            .filter(|a| a.flagged)
            .filter_map(|a| a.cluster)
            .collect();
        if let Some(dir) = self.report_dir.clone() {
            let path = super::report::write(&dir, &s, &plan, &verdicts)?;
            s.report = Some(path);
        }
        Ok(s)
    }

    /// Sends the jobs, `max_concurrent` at a time, each after reserving its price. Returns the
    /// images and the jobs without one.
    async fn generate(
        &self,
        jobs: &[Job],
        budget: &Budget,
    ) -> Result<(Vec<Candidate>, Vec<NoImage>), SynthError> {
        let bar = if self.progress {
            indicatif::ProgressBar::new(jobs.len() as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_message("synth");
        // Source frames, fetched once.
        let ids: Vec<SampleId> = jobs
            .iter()
            .filter_map(|j| j.source.as_ref()?.sample_id.parse().ok())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut frames: HashMap<String, Vec<u8>> = HashMap::new();
        for chunk in ids.chunks(64) {
            for (id, bytes) in self.store.images(chunk).await? {
                frames.insert(id.to_string(), bytes);
            }
        }
        let stopped: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
        let frames = &frames;
        let stopped = &stopped;
        let results: Vec<Sent> =
            futures::stream::iter(jobs.iter().cloned().map(|job| {
                let bar = bar.clone();
                async move {
                    let nothing = |kind: &str, why: &str| {
                        Sent::Nothing(NoImage {
                            job: job.clone(),
                            kind: kind.to_string(),
                            status: SynthStatus::Failed,
                            detail: why.to_string(),
                            cost: 0.0,
                        })
                    };
                    if stopped
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(&job.model.id)
                    {
                        return nothing("skipped", "the model refused an earlier call of this run");
                    }
                    let source = match &job.source {
                        Some(s) => match frames.get(&s.sample_id) {
                            Some(b) => Some(b.as_slice()),
                            None => return nothing("skipped", "source frame not in the store"),
                        },
                        None => None,
                    };
                    let Some(reservation) = budget.reserve(job.model.price_usd) else {
                        return nothing(OVER_BUDGET, "budget spent");
                    };
                    let result = self.backend.generate(&job, source).await;
                    bar.inc(1);
                    match result {
                        Ok(g) => Sent::Image(Candidate {
                            cost_usd: job.model.price_usd,
                            job,
                            bytes: g.bytes,
                            model_id: g.model_id,
                        }),
                        Err(e) => {
                            let cost = if e.billed() {
                                job.model.price_usd
                            } else {
                                budget.release(reservation);
                                0.0
                            };
                            if e.stops_model() {
                                stopped
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .insert(job.model.id.clone());
                            }
                            let status = match e {
                                GenError::Filtered { .. } => SynthStatus::Filtered,
                                _ => SynthStatus::Failed,
                            };
                            tracing::warn!(job = %job.synth_id, model = %job.model.id, error = %e, "generation failed");
                            Sent::Nothing(NoImage {
                                kind: e.kind().to_string(),
                                status,
                                detail: e.to_string(),
                                cost,
                                job,
                            })
                        }
                    }
                }
            }))
            .buffer_unordered(self.cfg.max_concurrent)
            .collect()
            .await;
        bar.finish_and_clear();
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        for r in results {
            match r {
                Sent::Image(c) => ok.push(c),
                Sent::Nothing(f) => failed.push(f),
            }
        }
        // Stable order for the checks (which image of two twins is kept must not depend on
        // which call answered first).
        ok.sort_by(|a, b| a.job.synth_id.cmp(&b.job.synth_id));
        failed.sort_by(|a, b| a.job.synth_id.cmp(&b.job.synth_id));
        Ok((ok, failed))
    }
}

fn job_row(
    job: &Job,
    run_id: &str,
    backend: &str,
    v: &Verdict,
    now: chrono::DateTime<chrono::Utc>,
) -> SynthImageRow {
    let mut prompt = job.prompt.clone();
    if let Some(search) = &job.search_prompt {
        prompt = format!("{prompt} [search: {search}]");
    }
    SynthImageRow {
        synth_id: job.synth_id.clone(),
        run_id: run_id.to_string(),
        request_id: job.request_id.clone(),
        gap: job.gap.clone(),
        cluster: job.cluster,
        label: job.label,
        backend: backend.to_string(),
        model_id: v.model_id.clone(),
        task: job.task.as_str().to_string(),
        prompt,
        negative_prompt: job.negative_prompt.clone(),
        seed: u64::from(job.seed),
        source_sample: job.source.as_ref().map(|s| s.sample_id.clone()),
        cost_usd: v.cost_usd,
        status: v.status,
        reason: v.reason.clone(),
        sample_id: v.sample_id.clone(),
        distance: v.distance,
        land_limit: v.land_limit,
        nearest_cluster: v.nearest_cluster,
        ts: now,
    }
}

/// Per gap: asked, made, accepted, refusals, spend, and coverage before → after.
fn outcomes(
    plan: &Plan,
    loaded: &Loaded,
    verdicts: &[Verdict],
    failed: &[NoImage],
) -> Vec<GapOutcome> {
    let members = &loaded.plan.members;
    let train_labelled = members
        .iter()
        .filter(|m| m.split == Split::Train && m.label.is_some())
        .count();
    let accepted_total = verdicts
        .iter()
        .filter(|v| v.status == SynthStatus::Accepted)
        .count();
    plan.gaps
        .iter()
        .filter(|g| plan.requests.iter().any(|r| r.gap == g.key))
        .map(|g| {
            let mine = |j: &Job| j.gap == g.key;
            let mut o = GapOutcome {
                gap: g.key.clone(),
                why: g.why.clone(),
                asked: plan.jobs.iter().filter(|j| mine(j)).count(),
                ..GapOutcome::default()
            };
            for v in verdicts.iter().filter(|v| mine(&v.job)) {
                o.generated += 1;
                o.spent_usd += v.cost_usd;
                if v.status == SynthStatus::Accepted {
                    o.accepted += 1;
                } else {
                    *o.rejected.entry(kind_of(&v.reason)).or_default() += 1;
                }
            }
            for f in failed.iter().filter(|f| mine(&f.job)) {
                o.spent_usd += f.cost;
                *o.rejected.entry(f.kind.clone()).or_default() += 1;
            }
            if let Some(c) = g.cluster {
                // Accepted images made for this gap passed its landing check.
                let landed = o.accepted;
                let before = g.train_members as f64 / train_labelled.max(1) as f64;
                let after = (g.train_members + landed) as f64
                    / (train_labelled + accepted_total).max(1) as f64;
                o.members_before = g.train_members;
                o.members_after = g.train_members + landed;
                o.before = Some(before);
                o.after = Some(after);
                o.goal = loaded
                    .plan
                    .clusters
                    .iter()
                    .find(|x| x.cluster == c && g.kind == crate::synth::GapKind::UnderCovered)
                    .map(|x| f64::from(x.traffic_share));
            } else if let Some((k, val)) = &g.stratum {
                let in_stratum = |m: &&crate::synth::plan::Member| {
                    m.split == Split::Train && m.label.is_some() && m.attr(k) == Some(val.as_str())
                };
                let pos = members
                    .iter()
                    .filter(in_stratum)
                    .filter(|m| m.label == Some(Label::Roadwork))
                    .count();
                let n = members.iter().filter(in_stratum).count();
                let minority = |p: usize, n: usize| {
                    let s = p as f64 / n.max(1) as f64;
                    s.min(1.0 - s)
                };
                let added: Vec<&Verdict> = verdicts
                    .iter()
                    .filter(|v| v.status == SynthStatus::Accepted && mine(&v.job))
                    .collect();
                let added_pos = added
                    .iter()
                    .filter(|v| v.job.label == Label::Roadwork)
                    .count();
                o.members_before = n;
                o.members_after = n + added.len();
                o.before = Some(minority(pos, n));
                o.after = Some(minority(pos + added_pos, n + added.len()));
                o.goal = Some(0.5);
            }
            o
        })
        .collect()
}

/// The shortcut audit over every cluster with enough real and synthetic members (the new
/// images counted in the cluster they landed in), and over all clusters together.
fn audit(loaded: &Loaded, verdicts: &[Verdict], cfg: &SynthConfig) -> Vec<AuditRow> {
    let v = &loaded.vectors;
    let row = super::load::row_index(v);
    /// Real and synthetic unit vectors of one cluster.
    type Sides = (Vec<Vec<f32>>, Vec<Vec<f32>>);
    let mut groups: BTreeMap<u32, Sides> = BTreeMap::new();
    for m in &loaded.plan.members {
        let Some(&r) = row.get(m.sample_id.as_str()) else {
            continue;
        };
        let x = v.data[r * v.dim..(r + 1) * v.dim].to_vec();
        let g = groups.entry(m.cluster).or_default();
        if m.source == SampleSource::Synthetic.as_str() {
            g.1.push(x);
        } else {
            g.0.push(x);
        }
    }
    for vd in verdicts {
        if let (Some(c), Some(x)) = (vd.nearest_cluster, &vd.vector)
            && vd.status == SynthStatus::Accepted
        {
            let mut unit = x.clone();
            let n = unit.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
            unit.iter_mut().for_each(|a| *a /= n);
            groups.entry(c).or_default().1.push(unit);
        }
    }
    let min = cfg.audit.min_per_side;
    let mut out = Vec::new();
    let (mut all_real, mut all_syn): (Vec<&[f32]>, Vec<&[f32]>) = (Vec::new(), Vec::new());
    for (c, (real, syn)) in &groups {
        all_real.extend(real.iter().map(Vec::as_slice));
        all_syn.extend(syn.iter().map(Vec::as_slice));
        if syn.is_empty() {
            continue;
        }
        let auc = (real.len() >= min && syn.len() >= min)
            .then(|| {
                let r: Vec<&[f32]> = real.iter().map(Vec::as_slice).collect();
                let s: Vec<&[f32]> = syn.iter().map(Vec::as_slice).collect();
                domain_auc(&r, &s, cfg.seed)
            })
            .flatten();
        out.push(AuditRow {
            cluster: Some(*c),
            real: real.len(),
            synthetic: syn.len(),
            auc,
            flagged: auc.is_some_and(|a| a >= cfg.audit.flag_auc),
        });
    }
    if all_real.len() >= min && all_syn.len() >= min {
        let auc = domain_auc(&all_real, &all_syn, cfg.seed);
        out.push(AuditRow {
            cluster: None,
            real: all_real.len(),
            synthetic: all_syn.len(),
            auc,
            flagged: auc.is_some_and(|a| a >= cfg.audit.flag_auc),
        });
    }
    out
}

/// The plan of `cfg` on `store`: gaps, requests, jobs and their cost. Reads only; needs neither a
/// generator nor an encoder.
pub async fn plan(
    store: &Store,
    cfg: &SynthConfig,
    split: &SplitConfig,
) -> Result<Plan, SynthError> {
    cfg.validate().map_err(SynthError::Config)?;
    let loaded = load(store, cfg.mine_run.as_deref(), split).await?;
    Ok(make_plan(cfg, &loaded.plan))
}

/// Where reports go by default.
pub fn default_report_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("reports").join("synth")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_never_passes_its_limits_under_contention() {
        let b = Arc::new(Budget::new(1_000, 1.0));
        let granted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|t| {
                    let b = b.clone();
                    s.spawn(move || {
                        let mut n = 0;
                        for i in 0..100 {
                            if let Some(r) = b.reserve(0.07) {
                                // Some calls are not billed and give their reservation back.
                                if (t + i) % 5 == 0 {
                                    b.release(r);
                                } else {
                                    n += 1;
                                }
                            }
                        }
                        n
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let (images, usd) = b.spent();
        assert_eq!(granted, 14, "1.00 / 0.07 = 14 billed calls");
        assert_eq!(images, 14);
        assert!(usd <= 1.0 && (usd - 0.98).abs() < 1e-9, "{usd}");
        let few = Budget::new(2, 100.0);
        assert!(few.reserve(1.0).is_some() && few.reserve(1.0).is_some());
        assert!(
            few.reserve(0.0).is_none(),
            "the image limit holds at price 0 too"
        );
    }
}
