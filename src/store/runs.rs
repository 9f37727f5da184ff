//! The run ledger: one row per stage run (`runs` table), with a typed id, kind and status and the
//! table versions the run read and wrote. Every stage records itself here through [`RunLedger`]:
//! `start` writes a `running` row, `finish` / `fail` rewrite it. The nightly job resumes from these
//! rows (a stage with an `ok` row for the night is done), and a model card names the mining run
//! whose clusters it was judged on.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rand::Rng;

use super::rows::serde_as;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, WriteResult};

/// What kind of stage a run was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunKind {
    IngestFolder,
    IngestNatix,
    /// roadwork's own Parquet export read back (`roadwork ingest parquet`).
    IngestParquet,
    IngestQuerylog,
    Embed,
    Mine,
    Train,
    LabelsImport,
    Teach,
    /// Synthetic gap filling (`roadwork synth run`).
    Synth,
    /// A whole nightly job; its stages' runs name it as their parent.
    Nightly,
}

impl RunKind {
    /// Every kind, in loop order.
    pub const ALL: [RunKind; 11] = [
        RunKind::IngestFolder,
        RunKind::IngestNatix,
        RunKind::IngestParquet,
        RunKind::IngestQuerylog,
        RunKind::Embed,
        RunKind::Mine,
        RunKind::Train,
        RunKind::LabelsImport,
        RunKind::Teach,
        RunKind::Synth,
        RunKind::Nightly,
    ];

    /// The stored spelling (also the run id's prefix).
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::IngestFolder => "ingest-folder",
            RunKind::IngestNatix => "ingest-natix",
            RunKind::IngestParquet => "ingest-parquet",
            RunKind::IngestQuerylog => "ingest-querylog",
            RunKind::Embed => "embed",
            RunKind::Mine => "mine",
            RunKind::Train => "train",
            RunKind::LabelsImport => "labels-import",
            RunKind::Teach => "teach",
            RunKind::Synth => "synth",
            RunKind::Nightly => "nightly",
        }
    }
}

impl fmt::Display for RunKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown run kind {s:?}"))
    }
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Started and not finished: still going, or killed (a crash leaves this).
    Running,
    Ok,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Ok => "ok",
            RunStatus::Failed => "failed",
        }
    }
}

impl FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [RunStatus::Running, RunStatus::Ok, RunStatus::Failed]
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown run status {s:?}"))
    }
}

/// A run's id: `<kind>-<UTC start, YYYYMMDDTHHMMSS.mmm>-<4 hex>`, so ids sort by kind and time
/// and two runs started in the same millisecond do not collide. Ids read back from older stores
/// keep whatever form they were written in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunId(String);

impl RunId {
    /// A fresh id for a run of `kind` starting at `at`.
    pub fn new(kind: RunKind, at: DateTime<Utc>) -> Self {
        let suffix: u16 = rand::rng().random();
        Self(format!(
            "{kind}-{}-{suffix:04x}",
            at.format("%Y%m%dT%H%M%S%.3f")
        ))
    }

    /// An id as stored (any non-empty string without quotes, so it is safe in a SQL filter).
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty()
            || s.len() > 200
            || s.contains(['\'', '"', '\\'])
            || s.contains(char::is_control)
        {
            return Err(format!("bad run id {s:?}"));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RunId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<RunId> for String {
    fn from(id: RunId) -> Self {
        id.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Table name → Lance version.
pub type TableVersions = BTreeMap<String, u64>;

/// One stage run in the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRow {
    pub run_id: RunId,
    pub kind: RunKind,
    #[serde(with = "serde_as::micros")]
    pub started_at: DateTime<Utc>,
    #[serde(with = "serde_as::opt_micros", default)]
    pub finished_at: Option<DateTime<Utc>>,
    pub status: RunStatus,
    /// JSON of the run's parameters.
    pub params: String,
    /// JSON of the run's result (the stage's typed report).
    pub summary: String,
    /// The run that started this one (a nightly job's id), if any. Layout 4 added the column
    /// (and `reads`, `writes`); a ledger read at an older version has none of them.
    #[serde(rename = "parent_run", default)]
    pub parent: Option<RunId>,
    /// Versions of the tables the run read, as they were when it read them.
    #[serde(with = "serde_as::json_text", default)]
    pub reads: TableVersions,
    /// Versions of the tables after the run's writes (only tables it wrote).
    #[serde(with = "serde_as::json_text", default)]
    pub writes: TableVersions,
}

/// A run being recorded: created by [`RunLedger::start`], closed by `finish` or `fail`.
#[derive(Debug, Clone)]
pub struct RunLedger {
    store: Store,
    row: RunRow,
}

impl RunLedger {
    /// Writes a `running` row for a new run of `kind` with its parameters.
    pub async fn start(
        store: &Store,
        kind: RunKind,
        params: serde_json::Value,
    ) -> Result<Self, StoreError> {
        let now = Utc::now();
        let row = RunRow {
            run_id: RunId::new(kind, now),
            kind,
            started_at: now,
            finished_at: None,
            status: RunStatus::Running,
            params: params.to_string(),
            summary: "{}".into(),
            parent: store.parent_run().cloned(),
            reads: TableVersions::new(),
            writes: TableVersions::new(),
        };
        store.record_run(&row).await?;
        Ok(Self {
            store: store.clone(),
            row,
        })
    }

    pub fn id(&self) -> &RunId {
        &self.row.run_id
    }

    pub fn row(&self) -> &RunRow {
        &self.row
    }

    /// Notes the version of `table` the run read (recorded when the run closes).
    pub fn read(&mut self, table: &str, version: u64) {
        self.row.reads.insert(table.to_string(), version);
    }

    /// Notes every table version of a map as read.
    pub fn read_all(&mut self, versions: &TableVersions) {
        self.row.reads.extend(versions.clone());
    }

    /// Notes a write's resulting version of `table`, when it wrote anything.
    pub fn wrote(&mut self, table: &str, w: &WriteResult) {
        if w.inserted + w.updated > 0 {
            self.row.writes.insert(table.to_string(), w.version);
        }
    }

    /// Re-opens a run that did not finish (a killed or failed nightly job) to continue it under
    /// the same id: the row goes back to `running`, keeping its reads, writes and summary.
    pub async fn reopen(store: &Store, mut row: RunRow) -> Result<Self, StoreError> {
        row.status = RunStatus::Running;
        row.finished_at = None;
        store.record_run(&row).await?;
        Ok(Self {
            store: store.clone(),
            row,
        })
    }

    /// Rewrites the still-running row with the progress so far (a long composite run records
    /// each finished step, so a crash loses at most the step in flight).
    pub async fn checkpoint(&mut self, progress: &impl Serialize) -> Result<(), StoreError> {
        self.row.summary = serde_json::to_string(progress).unwrap_or_else(|_| "{}".into());
        self.store.record_run(&self.row).await.map(|_| ())
    }

    /// Closes the run by its stage's result: `ok` with the report, or `failed` with the error
    /// (which is passed on).
    pub async fn close<T: Serialize, E: fmt::Display + From<StoreError>>(
        self,
        result: Result<T, E>,
    ) -> Result<T, E> {
        match result {
            Ok(report) => {
                self.finish(&report).await?;
                Ok(report)
            }
            Err(e) => {
                self.fail(&e).await;
                Err(e)
            }
        }
    }

    /// Closes the run as `ok` with its report.
    pub async fn finish(mut self, summary: &impl Serialize) -> Result<RunRow, StoreError> {
        self.row.status = RunStatus::Ok;
        self.row.finished_at = Some(Utc::now());
        self.row.summary = serde_json::to_string(summary).unwrap_or_else(|_| "{}".into());
        self.store.record_run(&self.row).await?;
        Ok(self.row)
    }

    /// Closes the run as `failed` with the error's text. A ledger write error is logged, not
    /// returned: the caller is already returning the run's own error. (The text is taken before
    /// the future starts, so the error need not be `Sync`.)
    pub fn fail(mut self, error: &dyn fmt::Display) -> impl Future<Output = RunRow> + Send {
        self.row.status = RunStatus::Failed;
        self.row.finished_at = Some(Utc::now());
        self.row.summary = serde_json::json!({ "error": error.to_string() }).to_string();
        async move {
            if let Err(e) = self.store.record_run(&self.row).await {
                tracing::warn!(run = %self.row.run_id, error = %e, "could not record the failed run");
            }
            self.row
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_one_format_sort_by_time_and_kinds_round_trip() {
        let t = DateTime::parse_from_rfc3339("2026-12-01T10:30:15.123Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = RunId::new(RunKind::Mine, t);
        assert!(id.as_str().starts_with("mine-20261201T103015.123-"), "{id}");
        assert_eq!(id.as_str().len(), "mine-20261201T103015.123-abcd".len());
        let later = RunId::new(RunKind::Mine, t + chrono::Duration::seconds(1));
        assert!(later > id);
        for k in RunKind::ALL {
            assert_eq!(k.as_str().parse::<RunKind>(), Ok(k));
        }
        assert!("mining".parse::<RunKind>().is_err());
        assert!(RunId::parse("x' OR '1'='1").is_err() && RunId::parse("").is_err());
    }
}
