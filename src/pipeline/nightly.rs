//! `roadwork nightly`: the whole loop as one job, stage by stage, recorded in the run ledger.
//!
//! ingest → embed → mine → select (+ export for labelling) → teach → synth → train → eval →
//! promote → notify → housekeeping, each as configured in `[pipeline]` and its own section.
//!
//! - **One writer.** The job holds the store's writer lock ([`WriterLock`]) from start to end; a
//!   second job, or a `roadwork train` by hand, is refused with the holder's name. A lock left by
//!   a killed job is taken over with a message.
//! - **Ledger.** The job is a `nightly` row in `runs`; its summary lists every stage's record
//!   (status, inputs, outputs, child run ids, timings), rewritten after each stage, and every stage
//!   run names the job as its parent.
//! - **Idempotent stages.** Ingest and embed write only what is new. Mine, select, teach, train,
//!   eval and promote compare their inputs (table versions, the runs they build on, their
//!   settings) with their last successful record and are skipped when nothing changed, so a
//!   re-run on unchanged inputs changes nothing. Compaction does not count as a change: the
//!   housekeeping record maps the versions it produced to the ones they rewrote.
//! - **Resume.** `--resume` continues the latest unfinished job under its own id from its first
//!   stage without a finished record; stages are idempotent, so a stage killed half-way is
//!   simply run again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::Instrument;

use super::PipelineError;
use crate::config::{Config, SourceKind, Stage};
use crate::ingest::{FolderOptions, Ingestor, NatixOptions};
use crate::labels::{ExportOptions, TeachTargets, Teacher, export_selection};
use crate::mine::{Compute, Miner};
use crate::store::lock::WriterLock;
use crate::store::{
    RunKind, RunLedger, RunRow, RunStatus, SampleSource, Store, embeddings_table, tables,
};
use crate::train::{
    Registry, ShadowStats, Split, TrainError, Trainer, evaluate_version, judge, promote,
    write_report,
};

/// How a stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    Running,
    /// It ran and did its work.
    Done,
    /// Nothing to do (inputs unchanged, not configured, or nothing upstream to work on).
    Skipped,
    Failed,
}

/// One stage of one job, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: Stage,
    pub status: StageStatus,
    /// Why it was skipped, or what to know about it.
    pub note: Option<String>,
    /// What decides whether it must run again.
    pub inputs: Value,
    /// What later stages (and the report) use.
    pub outputs: Value,
    /// Ledger rows of the stage runs it started.
    pub runs: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub secs: f64,
}

/// A job's progress: the summary of its `nightly` ledger row.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NightlyProgress {
    pub stages: Vec<StageRecord>,
    /// The run report (`<data>/runs/<run id>/index.html`).
    pub report: Option<PathBuf>,
    pub champion_before: Option<String>,
    pub champion_after: Option<String>,
}

impl NightlyProgress {
    fn record(&self, stage: Stage) -> Option<&StageRecord> {
        self.stages.iter().find(|r| r.stage == stage)
    }

    /// An output of this job's `stage`, when it finished.
    pub fn output(&self, stage: Stage, key: &str) -> Option<&Value> {
        self.record(stage)
            .filter(|r| matches!(r.status, StageStatus::Done | StageStatus::Skipped))
            .and_then(|r| r.outputs.get(key))
            .filter(|v| !v.is_null())
    }

    fn output_str(&self, stage: Stage, key: &str) -> Option<String> {
        self.output(stage, key)
            .and_then(Value::as_str)
            .map(str::to_string)
    }
}

/// Where to abort the process (a test hook for resume: `ROADWORK_CRASH_AT=train:end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashAt {
    pub stage: Stage,
    /// At the stage's start (its record says `running`) or after its work, before it is recorded.
    pub after_work: bool,
}

impl std::str::FromStr for CrashAt {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (stage, at) = s.split_once(':').unwrap_or((s, "start"));
        let after_work = match at {
            "start" => false,
            "end" => true,
            _ => return Err(format!("crash point {at:?}: use start or end")),
        };
        Ok(Self {
            stage: stage.parse()?,
            after_work,
        })
    }
}

/// How to run the job.
#[derive(Debug, Clone, Default)]
pub struct NightlyOptions {
    /// Continue the latest unfinished job (a new one starts when there is none).
    pub resume: bool,
    pub from: Option<Stage>,
    pub until: Option<Stage>,
    /// Print what each stage would read and write; change nothing.
    pub dry_run: bool,
    pub progress: bool,
    pub crash_at: Option<CrashAt>,
}

/// What a stage of a dry run would do.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStage {
    pub stage: Stage,
    pub reads: Vec<String>,
    pub writes: Vec<String>,
    /// `run`, or why it would be skipped.
    pub action: String,
}

/// What the job did.
#[derive(Debug, Clone, Serialize)]
pub struct NightlyReport {
    pub run_id: String,
    pub resumed: bool,
    pub progress: NightlyProgress,
    /// The dry run's plan (empty otherwise).
    pub plan: Vec<PlannedStage>,
    /// Table versions now.
    pub versions: BTreeMap<String, u64>,
    /// The writer lock of a dead job that this one took over.
    pub took_over_lock: Option<String>,
}

/// The stages between `from` and `until` (inclusive) of the configured ones, in loop order.
pub fn stages_to_run(cfg: &Config, opts: &NightlyOptions) -> Result<Vec<Stage>, PipelineError> {
    let configured = cfg.pipeline.ordered_stages();
    for (flag, s) in [("--from", opts.from), ("--until", opts.until)] {
        if let Some(s) = s
            && !configured.contains(&s)
        {
            return Err(PipelineError::Usage(format!(
                "{flag} {s}: the stage is not in pipeline.stages ({})",
                configured
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    if let (Some(f), Some(u)) = (opts.from, opts.until)
        && f > u
    {
        return Err(PipelineError::Usage(format!(
            "--from {f} comes after --until {u} in the loop"
        )));
    }
    Ok(configured
        .into_iter()
        .filter(|s| opts.from.is_none_or(|f| *s >= f) && opts.until.is_none_or(|u| *s <= u))
        .collect())
}

/// What a stage reads and writes (for the dry run and the docs).
fn io_of(stage: Stage, cfg: &Config) -> (Vec<String>, Vec<String>) {
    let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match stage {
        Stage::Ingest => {
            let mut reads: Vec<String> = cfg
                .pipeline
                .sources
                .iter()
                .map(|s| format!("{:?} {}", s.kind, resolve(cfg, &s.path).display()).to_lowercase())
                .collect();
            if cfg.pipeline.querylog {
                reads.push(format!("query log {}", querylog_dir(cfg).display()));
            }
            (reads, v(&["samples", "labels", "predictions"]))
        }
        Stage::Embed => (v(&["samples"]), v(&["embeddings_<model>"])),
        Stage::Mine => (
            v(&[
                "samples",
                "labels",
                "predictions",
                "embeddings_<model>",
                "head_scores (champion)",
            ]),
            v(&[
                "mine_scores",
                "mine_clusters",
                "duplicates",
                "reports/<run>.md",
            ]),
        ),
        Stage::Select => (
            v(&[
                "samples",
                "labels",
                "embeddings_<model>",
                "head_scores (champion)",
            ]),
            v(&["selections", "labelling/<selection>/"]),
        ),
        Stage::Teach => (
            v(&["selections", "samples", "VLM [serve.tier2]"]),
            v(&["labels (teacher)"]),
        ),
        Stage::Synth => (
            v(&[
                "runs (mining run)",
                "mine_clusters",
                "mine_scores",
                "samples",
                "labels",
                "embeddings_<model>",
                "synth_images",
            ]),
            v(&[
                "samples (synthetic)",
                "labels (synthetic)",
                "embeddings_<model>",
                "synth_images",
                "reports/synth/<run>.html",
            ]),
        ),
        Stage::Train => (
            v(&[
                "samples",
                "labels",
                "embeddings_<model>",
                "runs (slice run)",
            ]),
            v(&[
                "snapshot tag train/<version>",
                "registry",
                "models",
                "head_scores",
                "evaluations",
            ]),
        ),
        Stage::Eval => (
            v(&["registry", "the challenger's snapshot"]),
            v(&["evaluations", "reports/<version>-eval/"]),
        ),
        Stage::Promote => (
            v(&["registry", "the challenger's snapshot"]),
            v(&["CHAMPION.json"]),
        ),
        Stage::Notify => (v(&["CHAMPION.json", "server /healthz"]), vec![]),
        Stage::Housekeeping => (
            v(&["every table"]),
            v(&["every table (compaction, old versions)"]),
        ),
    }
}

fn resolve(cfg: &Config, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        cfg.data.dir.join(p)
    }
}

fn querylog_dir(cfg: &Config) -> PathBuf {
    cfg.serve
        .querylog_dir
        .clone()
        .unwrap_or_else(|| cfg.data.dir.join("querylog"))
}

/// Every earlier job's progress, oldest first.
fn history(runs: &[RunRow]) -> Vec<NightlyProgress> {
    runs.iter()
        .filter(|r| r.kind == RunKind::Nightly)
        .filter_map(|r| serde_json::from_str(&r.summary).ok())
        .collect()
}

/// Table versions, with compactions mapped back to the version whose rows they rewrote.
struct Versions {
    now: BTreeMap<String, u64>,
    same_as: HashMap<(String, u64), u64>,
}

impl Versions {
    fn new(now: BTreeMap<String, u64>, jobs: &[&NightlyProgress]) -> Self {
        let mut same_as = HashMap::new();
        for p in jobs {
            if let Some(tables) = p
                .output(Stage::Housekeeping, "tables")
                .and_then(Value::as_array)
            {
                for t in tables {
                    let (Some(name), Some(b), Some(a), Some(rb), Some(ra)) = (
                        t.get("table").and_then(Value::as_str),
                        t.get("version_before").and_then(Value::as_u64),
                        t.get("version_after").and_then(Value::as_u64),
                        t.get("rows_before").and_then(Value::as_u64),
                        t.get("rows_after").and_then(Value::as_u64),
                    ) else {
                        continue;
                    };
                    if rb == ra && a != b {
                        same_as.insert((name.to_string(), a), b);
                    }
                }
            }
        }
        Self { now, same_as }
    }

    /// The canonical current version of `table` (0 when it does not exist).
    fn of(&self, table: &str) -> u64 {
        let mut v = self.now.get(table).copied().unwrap_or(0);
        for _ in 0..1000 {
            match self.same_as.get(&(table.to_string(), v)) {
                Some(&b) if b != v => v = b,
                _ => break,
            }
        }
        v
    }

    fn of_all(&self, names: &[&str]) -> Value {
        Value::Object(
            names
                .iter()
                .map(|t| (t.to_string(), json!(self.of(t))))
                .collect(),
        )
    }
}

/// What one stage function returns.
struct Outcome {
    status: StageStatus,
    note: Option<String>,
    inputs: Value,
    outputs: Value,
    runs: Vec<String>,
}

impl Outcome {
    fn done(inputs: Value, outputs: Value, runs: Vec<String>) -> Self {
        Self {
            status: StageStatus::Done,
            note: None,
            inputs,
            outputs,
            runs,
        }
    }

    fn skipped(note: impl Into<String>) -> Self {
        Self {
            status: StageStatus::Skipped,
            note: Some(note.into()),
            inputs: Value::Null,
            outputs: Value::Null,
            runs: vec![],
        }
    }

    fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// The job while it runs.
struct Night<'a> {
    cfg: &'a Config,
    store: Store,
    registry: Registry,
    progress: NightlyProgress,
    /// Earlier jobs, newest last.
    past: Vec<NightlyProgress>,
    run_id: String,
    quiet: bool,
}

impl Night<'_> {
    /// The latest finished record of `stage` (this job first, then earlier ones) whose inputs
    /// equal `inputs`.
    fn unchanged(&self, stage: Stage, inputs: &Value) -> Option<StageRecord> {
        std::iter::once(&self.progress)
            .chain(self.past.iter().rev())
            .filter_map(|p| p.record(stage))
            .find(|r| r.status == StageStatus::Done && &r.inputs == inputs)
            .cloned()
    }

    fn up_to_date(&self, stage: Stage, inputs: Value) -> Option<Outcome> {
        self.unchanged(stage, &inputs).map(|r| Outcome {
            status: StageStatus::Skipped,
            note: Some("inputs unchanged since its last successful run".into()),
            inputs,
            outputs: r.outputs,
            runs: vec![],
        })
    }

    async fn versions(&self) -> Result<Versions, PipelineError> {
        let jobs: Vec<&NightlyProgress> = self
            .past
            .iter()
            .chain(std::iter::once(&self.progress))
            .collect();
        Ok(Versions::new(self.store.versions().await?, &jobs))
    }

    fn champion(&self) -> Result<Option<String>, PipelineError> {
        Ok(self.registry.champion()?.map(|p| p.version))
    }

    async fn run(&mut self, stage: Stage) -> Result<Outcome, PipelineError> {
        match stage {
            Stage::Ingest => self.ingest().await,
            Stage::Embed => self.embed().await,
            Stage::Mine => self.mine().await,
            Stage::Select => self.select().await,
            Stage::Teach => self.teach().await,
            Stage::Synth => self.synth().await,
            Stage::Train => self.train().await,
            Stage::Eval => self.eval().await,
            Stage::Promote => self.promote().await,
            Stage::Notify => self.notify().await,
            Stage::Housekeeping => self.housekeeping().await,
        }
    }

    async fn ingest(&mut self) -> Result<Outcome, PipelineError> {
        let cfg = self.cfg;
        let mut ingestor = Ingestor::new(self.store.clone(), cfg.ingest.clone(), cfg.decode);
        if self.quiet {
            ingestor = ingestor.quiet();
        }
        let mut out = Vec::new();
        let mut runs = Vec::new();
        for src in &cfg.pipeline.sources {
            let path = resolve(cfg, &src.path);
            let s = match src.kind {
                SourceKind::Folder => {
                    let opts = FolderOptions {
                        labels_csv: src.labels.as_ref().map(|p| resolve(cfg, p)),
                        source: src.source.unwrap_or(SampleSource::Upload),
                        author: src.author.clone(),
                    };
                    ingestor.ingest_folder(&path, &opts).await?
                }
                SourceKind::Natix => {
                    let files = parquet_files(&path)?;
                    let opts = NatixOptions {
                        dataset_name: src
                            .dataset_name
                            .clone()
                            .unwrap_or_else(|| NatixOptions::default().dataset_name),
                    };
                    ingestor.ingest_natix(&files, &opts).await?
                }
            };
            runs.push(s.run_id.clone());
            out.push(json!({
                "input": s.input, "kind": s.kind, "scanned": s.scanned, "new_samples": s.new_samples,
                "labels_written": s.labels_written, "skipped": s.skipped.len(),
            }));
        }
        let mut note = None;
        if cfg.pipeline.querylog {
            let dir = querylog_dir(cfg);
            if dir.is_dir() {
                match crate::serve::QueryLog::open_if_unowned(&dir) {
                    Ok(Some(log)) => {
                        let m = super::serve::move_querylog(&log, &ingestor).await?;
                        out.push(json!({"input": dir, "kind": "querylog", "segments": m.segments,
                                       "scanned": m.records, "new_samples": m.new_samples,
                                       "predictions": m.predictions, "shadow_scores": m.shadow_scores}));
                    }
                    Ok(None) => {
                        note = Some(format!(
                            "a server owns {}; its mover ingests the query log",
                            dir.display()
                        ))
                    }
                    Err(e) => {
                        return Err(PipelineError::Task(format!(
                            "query log {}: {e}",
                            dir.display()
                        )));
                    }
                }
            }
        }
        // Samples from before the image_quality table get their scores (a no-op once done).
        let q = ingestor.backfill_quality().await?;
        let o = Outcome::done(
            Value::Null,
            json!({ "sources": out, "quality_backfilled": q.scored,
                    "quality_undecodable": q.skipped.len() }),
            runs,
        );
        Ok(match note {
            Some(n) => o.with_note(n),
            None => o,
        })
    }

    async fn embed(&mut self) -> Result<Outcome, PipelineError> {
        let s = crate::embed::embed(
            &self.store,
            &self.cfg.embed,
            None,
            self.cfg.decode,
            !self.quiet,
        )
        .await?;
        let o = Outcome::done(
            Value::Null,
            json!({"model_id": s.model_id, "table": s.table, "embedded": s.embedded,
                   "pending": s.pending, "random_weights": s.random_weights,
                   "skipped": s.skipped.len()}),
            vec![s.run_id.clone()],
        );
        Ok(if s.random_weights {
            o.with_note("random DINOv3 weights: the features carry no signal (name embed.weights, or use embed.encoder = \"baseline\")")
        } else if s.model_id.starts_with("baseline-") {
            o.with_note("baseline encoder (colour + gradient histograms), not DINOv3")
        } else {
            o
        })
    }

    /// The embeddings to work on; `None` while the store has none (a first night on an empty
    /// store has nothing to mine or train on, which is not a failure).
    async fn embedding_model(
        &self,
        configured: Option<&str>,
    ) -> Result<Option<String>, PipelineError> {
        match crate::mine::resolve_embedding_model(&self.store, configured).await {
            Ok(m) => Ok(Some(m)),
            Err(crate::mine::MineError::Empty(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Canonical versions of `data` and of the embeddings table a stage works on (the JSON its
    /// inputs compare); `None` while the store has no embeddings.
    async fn data_versions(
        &self,
        configured: Option<&str>,
        data: &[&str],
    ) -> Result<Option<Value>, PipelineError> {
        let Some(model) = self.embedding_model(configured).await? else {
            return Ok(None);
        };
        let emb = embeddings_table(&model);
        let mut names = data.to_vec();
        names.push(&emb);
        Ok(Some(self.versions().await?.of_all(&names)))
    }

    async fn mine(&mut self) -> Result<Outcome, PipelineError> {
        let data = [
            tables::SAMPLES,
            tables::LABELS,
            tables::PREDICTIONS,
            tables::SHADOW_SCORES,
        ];
        let Some(t) = self
            .data_versions(self.cfg.mine.embedding_model.as_deref(), &data)
            .await?
        else {
            return Ok(Outcome::skipped("the store has no embeddings yet"));
        };
        let inputs = json!({"tables": t, "config": self.cfg.mine});
        if let Some(o) = self.up_to_date(Stage::Mine, inputs.clone()) {
            return Ok(o);
        }
        let head = self.champion()?;
        let miner = Miner::new(self.store.clone(), self.cfg.mine.clone())?;
        let s = match miner
            .run(
                Compute::<crate::embed::Cpu>::host(),
                head.as_deref(),
                Some(&self.cfg.data.dir.join("reports")),
            )
            .await
        {
            Ok(s) => s,
            Err(crate::mine::MineError::Empty(why)) => return Ok(Outcome::skipped(why)),
            Err(e) => return Err(e.into()),
        };
        Ok(Outcome::done(
            inputs,
            json!({"run_id": s.run_id, "head": head, "n": s.n, "clusters": s.clusters,
                   "under_covered": s.under_covered.len(), "label_issues": s.label_issues,
                   "outliers": s.outliers, "report": s.report,
                   "drift_p": s.drift.as_ref().map(|d| d.p_value)}),
            vec![s.run_id],
        ))
    }

    /// The latest successful mining run: this job's, else the ledger's.
    async fn mine_run(&self) -> Result<Option<String>, PipelineError> {
        if let Some(r) = self.progress.output_str(Stage::Mine, "run_id") {
            return Ok(Some(r));
        }
        Ok(self
            .store
            .runs()
            .await?
            .into_iter()
            .rev()
            .find(|r| r.kind == RunKind::Mine && r.status == RunStatus::Ok)
            .map(|r| r.run_id.to_string()))
    }

    async fn select(&mut self) -> Result<Outcome, PipelineError> {
        if self
            .embedding_model(self.cfg.mine.embedding_model.as_deref())
            .await?
            .is_none()
        {
            return Ok(Outcome::skipped("the store has no embeddings yet"));
        }
        let sc = &self.cfg.pipeline.select;
        let v = self.versions().await?;
        let head = self.champion()?;
        let inputs = json!({
            "mine_run": self.mine_run().await?,
            "labels": v.of(tables::LABELS),
            "head": head,
            "config": sc,
        });
        if let Some(o) = self.up_to_date(Stage::Select, inputs.clone()) {
            return Ok(o);
        }
        let only = if sc.train_split_only {
            Some(train_split_ids(&self.store, &self.cfg.train.split).await?)
        } else {
            None
        };
        let name = self.run_id.clone();
        let miner = Miner::new(self.store.clone(), self.cfg.mine.clone())?;
        let (sel, rows) = match miner
            .select(
                Compute::<crate::embed::Cpu>::host(),
                head.as_deref(),
                &name,
                sc.budget,
                sc.strategy,
                only.as_ref(),
            )
            .await
        {
            Ok(x) => x,
            Err(crate::mine::MineError::Empty(why)) => return Ok(Outcome::skipped(why)),
            Err(e) => return Err(e.into()),
        };
        if rows.is_empty() {
            return Ok(
                Outcome::done(inputs, json!({"selection": null, "n": 0}), vec![])
                    .with_note("no unlabelled candidates: nothing selected"),
            );
        }
        let mut outputs = json!({"selection": name, "n": rows.len(), "strategy": sel.used.as_str(),
                                 "regime": sel.regime});
        if sc.export {
            let dir = sc
                .export_dir
                .clone()
                .map(|d| resolve(self.cfg, &d))
                .unwrap_or_else(|| self.cfg.data.dir.join("labelling"))
                .join(&name);
            let e = export_selection(
                &self.store,
                &ExportOptions {
                    selection: name.clone(),
                    out: dir,
                    image_url_prefix: None,
                    model_version: head,
                },
            )
            .await?;
            outputs["export"] = json!(e.out);
            outputs["sheet"] = json!(e.sheet);
            outputs["tasks"] = json!(e.tasks);
        }
        Ok(Outcome::done(inputs, outputs, vec![]))
    }

    async fn teach(&mut self) -> Result<Outcome, PipelineError> {
        let Some(vlm) = self.cfg.serve.tier2.clone() else {
            return Ok(Outcome::skipped(
                "no VLM configured ([serve.tier2]); nothing taught",
            ));
        };
        let targets = if self.cfg.pipeline.teach_hard > 0 {
            TeachTargets::Hard(self.cfg.pipeline.teach_hard)
        } else {
            match self.progress.output_str(Stage::Select, "selection") {
                Some(s) => TeachTargets::Selection(s),
                None => return Ok(Outcome::skipped("no selection tonight to teach")),
            }
        };
        let v = self.versions().await?;
        let inputs = json!({
            "targets": targets, "model": vlm.model, "labels": v.of(tables::LABELS),
            "mine_run": self.mine_run().await?, "config": self.cfg.teach,
        });
        if let Some(o) = self.up_to_date(Stage::Teach, inputs.clone()) {
            return Ok(o);
        }
        let t = Teacher::new(self.store.clone(), vlm, self.cfg.teach.clone())?;
        let s = t.teach(&targets).await?;
        Ok(Outcome::done(
            inputs,
            serde_json::to_value(&s).unwrap_or_default(),
            vec![s.run_id.clone()],
        ))
    }

    /// Fills the gaps of tonight's mining run with generated images (`[synth]`).
    async fn synth(&mut self) -> Result<Outcome, PipelineError> {
        let Some(mine_run) = self.mine_run().await? else {
            return Ok(Outcome::skipped("no mining run: no gaps to fill"));
        };
        let v = self.versions().await?;
        let inputs = json!({
            "mine_run": mine_run, "samples": v.of(tables::SAMPLES), "labels": v.of(tables::LABELS),
            "config": self.cfg.synth,
        });
        if let Some(o) = self.up_to_date(Stage::Synth, inputs.clone()) {
            return Ok(o);
        }
        // Its own images are no reason to synthesise again: when nothing but the last synthesis
        // wrote samples or labels since, tonight's mining run only scored those images, and the
        // job stays at a fixed point instead of spending every night.
        let now = json!({"samples": v.of(tables::SAMPLES), "labels": v.of(tables::LABELS)});
        let last = std::iter::once(&self.progress)
            .chain(self.past.iter().rev())
            .filter_map(|p| p.record(Stage::Synth))
            .find(|r| r.status == StageStatus::Done);
        if let Some(r) = last
            && r.outputs.get("after") == Some(&now)
        {
            return Ok(Outcome {
                status: StageStatus::Skipped,
                note: Some("no samples or labels since the last synthesis but its own".into()),
                inputs,
                outputs: r.outputs.clone(),
                runs: vec![],
            });
        }
        let mut sc = self.cfg.synth.clone();
        sc.mine_run = Some(mine_run);
        let embed = self.cfg.embed.clone();
        let encoder = tokio::task::spawn_blocking(move || {
            crate::embed::load_encoder(&embed, embed.weights.as_deref())
        })
        .await
        .map_err(|e| PipelineError::Task(e.to_string()))??;
        let backend = crate::synth::open_backend(&sc).await;
        let dir = sc
            .report_dir
            .clone()
            .unwrap_or_else(|| crate::synth::default_report_dir(&self.cfg.data.dir));
        let s = crate::synth::Synthesizer::new(
            self.store.clone(),
            sc,
            self.cfg.train.split.clone(),
            backend,
            encoder,
        )?
        .with_report_dir(dir)
        .with_progress(!self.quiet)
        .run()
        .await?;
        let note = (!s.flagged_clusters.is_empty()).then(|| {
            format!(
                "shortcut audit: synthetic images are separable from real ones in clusters {:?}",
                s.flagged_clusters
            )
        });
        let v = self.versions().await?;
        let mut outputs = serde_json::to_value(&s).unwrap_or_default();
        outputs["after"] =
            json!({"samples": v.of(tables::SAMPLES), "labels": v.of(tables::LABELS)});
        let o = Outcome::done(inputs, outputs, vec![s.run_id.clone()]);
        Ok(match note {
            Some(n) => o.with_note(n),
            None => o,
        })
    }

    async fn train(&mut self) -> Result<Outcome, PipelineError> {
        // Labels bought since the embed stage (selection, teacher, synthesis) get their
        // validator-augmented copies before the head is trained on them.
        let mut runs = Vec::new();
        let mut augmented = None;
        if self.cfg.embed.augment.copies > 0
            && self
                .embedding_model(self.cfg.train.embedding_model.as_deref())
                .await?
                .is_some()
        {
            let a = crate::embed::augment(
                &self.store,
                &self.cfg.embed,
                None,
                self.cfg.decode,
                !self.quiet,
            )
            .await?;
            runs.push(a.run_id.clone());
            augmented = Some(a.table);
        }
        let data = [tables::SAMPLES, tables::LABELS];
        let Some(mut t) = self
            .data_versions(self.cfg.train.embedding_model.as_deref(), &data)
            .await?
        else {
            return Ok(Outcome::skipped("the store has no embeddings yet"));
        };
        if let (Some(table), Some(obj)) = (augmented, t.as_object_mut()) {
            let v = self.versions().await?.of(&table);
            obj.insert(table, json!(v));
        }
        // The mining run only names the gate's slices (the card records it); a new mining run
        // on the same data is no reason to train again.
        let inputs = json!({"tables": t, "config": self.cfg.train});
        if let Some(o) = self.up_to_date(Stage::Train, inputs.clone()) {
            return Ok(o);
        }
        let mut trainer = Trainer::new(
            self.store.clone(),
            self.registry.clone(),
            self.cfg.train.clone(),
        )?;
        if self.quiet {
            trainer = trainer.quiet();
        }
        match trainer.train(None).await {
            Ok(s) => Ok(Outcome::done(
                inputs,
                json!({"version": s.card.model_version, "weights_sha256": s.card.weights_sha256,
                       "snapshot": s.card.snapshot, "data": s.card.data,
                       "metrics": s.card.metrics, "artifact_dir": s.artifact_dir,
                       "augmented": s.card.metrics_augmented.as_ref().map(|a| json!({
                           "trained_on": a.trained_on, "n": a.n, "mcc": a.metrics.mcc,
                           "accuracy": a.metrics.accuracy}))}),
                {
                    runs.push(s.run_id);
                    runs
                },
            )),
            Err(TrainError::NotEnoughData(why)) => {
                Ok(Outcome::skipped(format!("not enough labelled data: {why}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// This job's challenger (trained tonight, or the unchanged one it stands for).
    fn challenger(&self) -> Option<String> {
        self.progress.output_str(Stage::Train, "version")
    }

    async fn eval(&mut self) -> Result<Outcome, PipelineError> {
        let Some(version) = self.challenger() else {
            return Ok(Outcome::skipped("no challenger tonight"));
        };
        let inputs = json!({"challenger": version});
        if let Some(o) = self.up_to_date(Stage::Eval, inputs.clone()) {
            return Ok(o);
        }
        let t = &self.cfg.train;
        let (store, registry) = (&self.store, &self.registry);
        let e = evaluate_version(
            store,
            registry,
            &version,
            &t.split,
            t.replay_queries,
            t.seed,
        )
        .await?;
        // The champion's curves beside the challenger's, for the run report.
        let mut curves = serde_json::Map::new();
        curves.insert("challenger".into(), curve_summary(&e));
        if let Some(ch) = self.champion()?.filter(|c| *c != version) {
            match evaluate_version(store, registry, &ch, &t.split, t.replay_queries, t.seed).await {
                Ok(ce) => {
                    curves.insert("champion".into(), curve_summary(&ce));
                }
                Err(err) => tracing::warn!(champion = %ch, "champion not evaluated: {err}"),
            }
        }
        let (card, _) = registry.load(&version)?;
        let dir = self
            .cfg
            .data
            .dir
            .join("reports")
            .join(format!("{version}-eval"));
        let report = tokio::task::spawn_blocking(move || write_report(&dir, &e, Some(&card)))
            .await
            .map_err(|e| PipelineError::Task(e.to_string()))??;
        Ok(Outcome::done(
            inputs,
            json!({"report": report, "curves": curves}),
            vec![],
        ))
    }

    async fn promote(&mut self) -> Result<Outcome, PipelineError> {
        // Without a champion nothing serves, so nothing can be compared in shadow: the first head
        // is promoted on the gate alone.
        if self.cfg.pipeline.min_shadow > 0 && self.champion()?.is_some() {
            return self.promote_after_shadow().await;
        }
        let Some(version) = self.challenger() else {
            return Ok(Outcome::skipped("no challenger tonight"));
        };
        let champion = self.champion()?;
        if champion.as_deref() == Some(version.as_str()) {
            return Ok(Outcome::skipped(format!(
                "{version} is already the champion"
            )));
        }
        let inputs = json!({"challenger": version, "champion": champion});
        if let Some(o) = self.up_to_date(Stage::Promote, inputs.clone()) {
            return Ok(o);
        }
        let t = &self.cfg.train;
        let d = promote(
            &self.store,
            &self.registry,
            &version,
            &t.promote,
            &t.split,
            t.seed,
            false,
        )
        .await?;
        let note = if d.promoted {
            format!("{version} promoted")
        } else {
            format!("{version} refused: {}", d.reasons.join("; "))
        };
        Ok(Outcome::done(
            inputs,
            json!({"decision": d, "promoted": d.promoted, "champion_before": champion}),
            vec![],
        )
        .with_note(note))
    }

    /// Promotion with `pipeline.min_shadow`: a head that passes the gate is first named the
    /// challenger (`CHALLENGER.json`), which servers score in shadow; it is promoted on a later
    /// night, once the store holds `min_shadow` of its shadow answers beside the current champion
    /// and it still passes the gate. While one challenger collects answers, a newer head waits
    /// (replacing it would restart the count and could starve promotion for good).
    async fn promote_after_shadow(&mut self) -> Result<Outcome, PipelineError> {
        let min_shadow = self.cfg.pipeline.min_shadow;
        let tonight = self.challenger();
        let champion = self.champion()?;
        let pending = self
            .registry
            .challenger()?
            .map(|c| c.version)
            .filter(|v| Some(v) != champion.as_ref());
        let rows = match &pending {
            Some(p) => {
                self.store
                    .shadow_scores(Some(p), champion.as_deref())
                    .await?
            }
            None => Vec::new(),
        };
        let stats = ShadowStats::of(&rows);
        let fresh = tonight
            .clone()
            .filter(|v| Some(v) != champion.as_ref() && Some(v) != pending.as_ref());
        if fresh.is_none() && pending.is_none() {
            return Ok(Outcome::skipped(match tonight {
                Some(v) => format!("{v} is already the champion"),
                None => "no challenger tonight".into(),
            }));
        }
        let inputs = json!({"challenger": tonight, "champion": champion, "pending": pending,
                            "shadow_n": rows.len(), "min_shadow": min_shadow});
        if let Some(o) = self.up_to_date(Stage::Promote, inputs.clone()) {
            return Ok(o);
        }
        let t = &self.cfg.train;
        let (store, registry) = (&self.store, &self.registry);
        let mut notes = Vec::new();
        let (mut decision, mut promoted, mut waiting) = (None, false, false);
        if let Some(p) = &pending {
            let shadow = stats
                .as_ref()
                .map_or("no shadow answers".into(), ShadowStats::summary);
            if rows.len() >= min_shadow {
                let d = promote(store, registry, p, &t.promote, &t.split, t.seed, false).await?;
                promoted = d.promoted;
                if d.promoted {
                    notes.push(format!("{p} promoted after {shadow}"));
                } else {
                    registry.clear_challenger()?;
                    notes.push(format!(
                        "{p} refused after {shadow}: {}",
                        d.reasons.join("; ")
                    ));
                }
                decision = Some(d);
            } else {
                waiting = true;
                notes.push(format!(
                    "{p} stays in shadow: {} of {min_shadow} shadow answers",
                    rows.len()
                ));
            }
        }
        let mut gate = None;
        let mut named = None;
        if let Some(v) = fresh {
            if waiting {
                notes.push(format!(
                    "{v} waits: challenger {} is still collecting shadow answers",
                    pending.as_deref().unwrap_or("?")
                ));
            } else {
                let d = judge(store, registry, &v, &t.promote, &t.split, t.seed).await?;
                if d.promoted {
                    let why = format!("nightly {}: passed the gate", self.run_id);
                    registry.set_challenger(&v, &why)?;
                    notes.push(format!(
                        "{v} passed the gate and is the challenger: served in shadow until it has {min_shadow} shadow answers"
                    ));
                    named = Some(v);
                } else {
                    notes.push(format!("{v} refused: {}", d.reasons.join("; ")));
                }
                gate = Some(d);
            }
        }
        Ok(Outcome::done(
            inputs,
            json!({"decision": decision, "promoted": promoted, "champion_before": champion,
                   "shadow": stats, "shadow_required": min_shadow, "shadowed": pending,
                   "gate": gate, "named_challenger": named}),
            vec![],
        )
        .with_note(notes.join("; ")))
    }

    async fn notify(&mut self) -> Result<Outcome, PipelineError> {
        let promoted = self
            .progress
            .output(Stage::Promote, "promoted")
            .and_then(Value::as_bool)
            == Some(true);
        let champion = self.champion()?;
        if !promoted {
            return Ok(Outcome::skipped("no new champion tonight"));
        }
        let Some(want) = champion else {
            return Err(PipelineError::Task(
                "promoted, but the registry has no champion pointer".into(),
            ));
        };
        let Some(url) = self.cfg.pipeline.notify.url.clone() else {
            return Ok(Outcome::done(
                Value::Null,
                json!({"champion": want}),
                vec![],
            )
            .with_note(format!(
                "CHAMPION.json names {want}; servers follow it (set pipeline.notify.url to wait for one)"
            )));
        };
        let deadline = Instant::now()
            + std::time::Duration::from_secs(self.cfg.pipeline.notify.timeout_s.max(1));
        let health = format!("{}/healthz", url.trim_end_matches('/'));
        let http = reqwest::Client::new();
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            match http
                .get(&health)
                .timeout(std::time::Duration::from_secs(5))
                .send()
                .await
            {
                Ok(r) => match r.json::<Value>().await {
                    Ok(v) => {
                        let serving = v.get("model_version").and_then(Value::as_str).unwrap_or("");
                        if serving == want {
                            return Ok(Outcome::done(
                                Value::Null,
                                json!({"champion": want, "server": url}),
                                vec![],
                            ));
                        }
                        last = format!("serving {serving}");
                    }
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.without_url().to_string(),
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        Err(PipelineError::Task(format!(
            "the server at {url} did not pick up {want} within {} s ({last})",
            self.cfg.pipeline.notify.timeout_s
        )))
    }

    async fn housekeeping(&mut self) -> Result<Outcome, PipelineError> {
        let h = &self.cfg.pipeline.housekeeping;
        let t = self
            .store
            .housekeep(h.compact, h.keep_versions_days)
            .await?;
        let removed: u64 = t.iter().map(|x| x.versions_removed).sum();
        let bytes: u64 = t.iter().map(|x| x.bytes_removed).sum();
        let mut note = format!(
            "{removed} old versions removed ({:.1} MiB); tagged versions kept",
            bytes as f64 / (1 << 20) as f64
        );
        let mut pruned = crate::serve::Pruned::default();
        if h.querylog_done_days > 0 {
            let dir = querylog_dir(self.cfg);
            let age = std::time::Duration::from_secs(u64::from(h.querylog_done_days) * 86_400);
            pruned = tokio::task::spawn_blocking(move || crate::serve::prune_done(&dir, age))
                .await
                .map_err(|e| PipelineError::Task(e.to_string()))?
                .map_err(|e| PipelineError::Task(format!("pruning the query log's done/: {e}")))?;
            if pruned.segments > 0 {
                note.push_str(&format!(
                    "; {} ingested query-log segments older than {} days deleted ({:.1} MiB)",
                    pruned.segments,
                    h.querylog_done_days,
                    pruned.bytes as f64 / (1 << 20) as f64
                ));
            }
        }
        Ok(Outcome::done(
            Value::Null,
            json!({"tables": t, "querylog_done_pruned": pruned}),
            vec![],
        )
        .with_note(note))
    }
}

/// At most this many points of a curve are kept in the ledger.
const CURVE_POINTS: usize = 200;

/// A head's ROC and PR curves (thinned), its eval set and headline metrics.
fn curve_summary(e: &crate::train::Evaluation) -> Value {
    let thin = |c: &crate::train::Curve| {
        let step = c.x.len().div_ceil(CURVE_POINTS).max(1);
        let mut idx: Vec<usize> = (0..c.x.len()).step_by(step).collect();
        if let Some(last) = c.x.len().checked_sub(1)
            && idx.last() != Some(&last)
        {
            idx.push(last);
        }
        json!({
            "x": idx.iter().map(|&i| c.x[i]).collect::<Vec<_>>(),
            "y": idx.iter().map(|&i| c.y[i]).collect::<Vec<_>>(),
        })
    };
    json!({
        "version": e.model_version,
        "eval_set": e.eval_set,
        "n": e.metrics.n,
        "roc_auc": e.metrics.roc_auc,
        "pr_auc": e.metrics.pr_auc,
        "roc": thin(&e.roc),
        "pr": thin(&e.pr),
    })
}

/// `*.parquet` under `path` (sorted), or `path` itself when it is a file.
fn parquet_files(path: &Path) -> Result<Vec<PathBuf>, PipelineError> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let rd = std::fs::read_dir(path)
        .map_err(|e| PipelineError::Task(format!("NATIX source {}: {e}", path.display())))?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    Ok(files)
}

/// Samples whose split is `train` (labels bought for them train a head; the eval set stays the
/// frozen, group-drawn one): the splits training will draw, grouped by the latest mining run's
/// duplicate links as the training run that follows will group them.
async fn train_split_ids(
    store: &Store,
    split: &crate::train::SplitConfig,
) -> Result<HashSet<String>, PipelineError> {
    let run = crate::train::slice_run(store, None).await?;
    let splits = crate::train::read_splits(store, None, split, run.as_ref()).await?;
    Ok(splits
        .iter()
        .filter(|(_, p)| p.split == Split::Train)
        .map(|(id, _)| id.clone())
        .collect())
}

/// The dry run: what each stage would read and write, and whether it would run.
fn plan(
    cfg: &Config,
    runs: &[RunRow],
    versions: BTreeMap<String, u64>,
    stages: &[Stage],
) -> Vec<PlannedStage> {
    let past = history(runs);
    let jobs: Vec<&NightlyProgress> = past.iter().collect();
    let v = Versions::new(versions, &jobs);
    let last = |stage: Stage| {
        past.iter()
            .rev()
            .filter_map(|p| p.record(stage))
            .find(|r| r.status == StageStatus::Done)
    };
    let mut out = Vec::new();
    for &s in stages {
        let (reads, writes) = io_of(s, cfg);
        let action = match s {
            Stage::Synth => format!(
                "run ({} backend, at most {} images and ${:.2})",
                cfg.synth.backend.as_str(),
                cfg.synth.max_images,
                cfg.synth.max_usd
            ),
            Stage::Teach if cfg.serve.tier2.is_none() => "skip: no [serve.tier2] VLM".into(),
            Stage::Mine | Stage::Train => match last(s) {
                Some(r) => {
                    let same = r.inputs.get("tables").is_some_and(|t| {
                        t.as_object()
                            .is_some_and(|m| m.iter().all(|(k, val)| val.as_u64() == Some(v.of(k))))
                    });
                    if same {
                        "skip unless upstream stages change its inputs (tables unchanged since its last run)".into()
                    } else {
                        "run (its input tables changed since its last run)".into()
                    }
                }
                None => "run (never ran)".into(),
            },
            _ => "run".into(),
        };
        out.push(PlannedStage {
            stage: s,
            reads,
            writes,
            action,
        });
    }
    out
}

/// Runs the nightly job on the store and data directory of `cfg`.
pub async fn run(cfg: &Config, opts: &NightlyOptions) -> Result<NightlyReport, PipelineError> {
    let stages = stages_to_run(cfg, opts)?;
    if stages.contains(&Stage::Ingest) && !opts.dry_run {
        let missing: Vec<String> = cfg
            .pipeline
            .sources
            .iter()
            .map(|s| resolve(cfg, &s.path))
            .filter(|p| !p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            return Err(PipelineError::Usage(format!(
                "pipeline sources not found: {}",
                missing.join(", ")
            )));
        }
    }
    if opts.dry_run {
        // A dry run opens an existing store only: it must not even create an empty one.
        let uri = cfg.data.store_uri();
        let (runs, versions) = if uri.contains("://") || Path::new(&uri).exists() {
            let store = Store::open(&uri).await?;
            (store.runs().await?, store.versions().await?)
        } else {
            (Vec::new(), BTreeMap::new())
        };
        return Ok(NightlyReport {
            run_id: String::new(),
            resumed: false,
            progress: NightlyProgress::default(),
            plan: plan(cfg, &runs, versions.clone(), &stages),
            versions,
            took_over_lock: None,
        });
    }
    let store = Store::open(&cfg.data.store_uri()).await?;
    let lock = WriterLock::acquire(
        &WriterLock::path_for(store.uri(), &cfg.data.dir),
        "roadwork nightly",
    )
    .map_err(PipelineError::Locked)?;
    let runs = store.runs().await?;
    let unfinished = runs
        .iter()
        .rev()
        .find(|r| r.kind == RunKind::Nightly)
        .filter(|r| r.status != RunStatus::Ok)
        .cloned();
    let (mut ledger, progress, resumed) = match unfinished {
        Some(row) if opts.resume => {
            let progress: NightlyProgress = serde_json::from_str(&row.summary).unwrap_or_default();
            tracing::info!(run = %row.run_id, "resuming the unfinished nightly job");
            (RunLedger::reopen(&store, row).await?, progress, true)
        }
        _ => {
            if opts.resume {
                tracing::info!("no unfinished nightly job to resume; starting a new one");
            }
            let params = json!({"stages": stages, "from": opts.from, "until": opts.until,
                                "pipeline": cfg.pipeline});
            let l = RunLedger::start(&store, RunKind::Nightly, params).await?;
            (l, NightlyProgress::default(), false)
        }
    };
    let run_id = ledger.id().to_string();
    let this = ledger.id().clone();
    let past: Vec<NightlyProgress> = history(
        &runs
            .into_iter()
            .filter(|r| r.run_id != this)
            .collect::<Vec<_>>(),
    );
    let registry = Registry::open(cfg.train.registry_dir(&cfg.data.dir))?;
    let mut night = Night {
        cfg,
        store: store.for_run(&this),
        registry,
        progress,
        past,
        run_id: run_id.clone(),
        quiet: !opts.progress,
    };
    if night.progress.champion_before.is_none() && !resumed {
        night.progress.champion_before = night.champion()?;
    }
    let bar = if opts.progress {
        indicatif::ProgressBar::new(stages.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("nightly [{pos}/{len}] {msg} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    for &stage in &stages {
        bar.set_message(stage.as_str());
        if night
            .progress
            .record(stage)
            .is_some_and(|r| matches!(r.status, StageStatus::Done | StageStatus::Skipped))
        {
            bar.inc(1);
            continue;
        }
        let started = Instant::now();
        let started_at = Utc::now();
        night.progress.stages.retain(|r| r.stage != stage);
        night.progress.stages.push(StageRecord {
            stage,
            status: StageStatus::Running,
            note: None,
            inputs: Value::Null,
            outputs: Value::Null,
            runs: vec![],
            started_at,
            secs: 0.0,
        });
        ledger.checkpoint(&night.progress).await?;
        crash(opts, stage, false);
        let span = tracing::info_span!("stage", stage = %stage, run = %run_id);
        let result = night.run(stage).instrument(span).await;
        crash(opts, stage, true);
        let secs = started.elapsed().as_secs_f64();
        let rec = match &result {
            Ok(o) => StageRecord {
                stage,
                status: o.status,
                note: o.note.clone(),
                inputs: o.inputs.clone(),
                outputs: o.outputs.clone(),
                runs: o.runs.clone(),
                started_at,
                secs,
            },
            Err(e) => StageRecord {
                stage,
                status: StageStatus::Failed,
                note: Some(e.to_string()),
                inputs: Value::Null,
                outputs: Value::Null,
                runs: vec![],
                started_at,
                secs,
            },
        };
        match &rec.status {
            StageStatus::Done => {
                tracing::info!(stage = %stage, secs, note = rec.note.as_deref().unwrap_or(""), "stage done")
            }
            StageStatus::Skipped => {
                tracing::info!(stage = %stage, note = rec.note.as_deref().unwrap_or(""), "stage skipped")
            }
            _ => {}
        }
        night.progress.stages.retain(|r| r.stage != stage);
        night.progress.stages.push(rec);
        if let Err(e) = result {
            bar.abandon_with_message(format!("{stage} failed"));
            night.progress.champion_after = night.champion().ok().flatten();
            let report =
                super::report::write_run_report(cfg, &night.store, &run_id, &night.progress)
                    .await
                    .ok();
            night.progress.report = report;
            ledger.checkpoint(&night.progress).await?;
            let _ = ledger.fail(&e).await;
            drop(lock);
            return Err(PipelineError::Stage {
                stage,
                run_id,
                source: Box::new(e),
            });
        }
        ledger.checkpoint(&night.progress).await?;
        bar.inc(1);
    }
    bar.finish_with_message("done");
    night.progress.champion_after = night.champion()?;
    night.progress.report =
        Some(super::report::write_run_report(cfg, &night.store, &run_id, &night.progress).await?);
    let progress = night.progress.clone();
    ledger.finish(&progress).await?;
    let versions = store.versions().await?;
    let took_over_lock = lock.took_over.as_ref().map(|h| h.to_string());
    drop(lock);
    Ok(NightlyReport {
        run_id,
        resumed,
        progress,
        plan: vec![],
        versions,
        took_over_lock,
    })
}

/// The test hook: abort the whole process here, as a kill would.
fn crash(opts: &NightlyOptions, stage: Stage, after_work: bool) {
    if opts.crash_at == Some(CrashAt { stage, after_work }) {
        eprintln!(
            "crash requested at {stage}:{}; aborting",
            if after_work { "end" } else { "start" }
        );
        std::process::abort();
    }
}
