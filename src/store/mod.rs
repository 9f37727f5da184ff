//! The store: one Lance database (a local directory by default, any lancedb URI such as `s3://…`
//! otherwise) holding every table of the loop.
//!
//! Invariants:
//! - `sample_id` is the hex sha256 of the original bytes; samples are immutable and every write is a
//!   `merge_insert` on the table's key, so re-running any ingest adds nothing.
//! - Each write is one Lance commit: a crash leaves every table at its last committed version.
//! - Labels keep provenance; [`effective_labels`] applies the precedence rule.
//! - Snapshots are Lance tags on every table at once (`train/<model_id>` pins a training set);
//!   maintenance never removes a tagged version.
//! - The layout is versioned ([`schema::SCHEMA_VERSION`]); a store from a newer layout is refused.

mod augmented;
mod embeddings;
mod error;
mod ids;
mod labels;
pub mod lock;
mod maintenance;
pub mod manifest;
mod mining;
mod models;
mod quality;
pub mod querylog;
pub mod rows;
mod runs;
pub mod schema;
mod shadow;
mod snapshot;
mod synth;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchIterator};
use arrow_schema::SchemaRef;
use futures::TryStreamExt;
use lancedb::query::{ExecutableQuery, QueryBase, Select};
use schema::col;

pub use augmented::{
    AUGMENTED_PREFIX, AugmentedVector, COPY_ID, augmented_schema, augmented_table,
    collect_augmented,
};
pub use embeddings::{
    EMBEDDED_AT, IndexOutcome, MODEL_ID, VECTOR, VectorRows, collect_vectors, embeddings_schema,
    embeddings_table,
};
pub use error::StoreError;
pub use ids::{BadSampleId, Era, Label, LabelSource, SampleId, SampleSource};
pub use labels::{EffectiveLabel, effective_labels};
pub use maintenance::TableHousekeeping;
pub use mining::{DuplicateRow, MineClusterRow, MineScoreRow, SelectionRow};
pub use models::{EvaluationRow, HeadScoreRow, ModelRow};
pub use quality::ImageQualityRow;
pub use rows::TableRow;
pub use runs::{RunId, RunKind, RunLedger, RunStatus, TableVersions};
pub use schema::{LabelRow, MetaRow, PredictionRow, RunRow, SCHEMA_VERSION, SampleRow, tables};
pub use shadow::ShadowRow;
pub use snapshot::SnapshotName;
pub use synth::{SynthImageRow, SynthStatus};

/// What one write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteResult {
    /// Rows that were not there before.
    pub inserted: u64,
    /// Existing rows whose content changed.
    pub updated: u64,
    /// Table version after the write (unchanged when nothing was written).
    pub version: u64,
}

/// A snapshot: the version of every table under one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub name: SnapshotName,
    pub versions: BTreeMap<String, u64>,
}

/// Handle to an open store. Cheap to clone; tables are opened per operation so every read sees the
/// latest commit, also one made by another process.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: lancedb::Connection,
    uri: String,
    /// The run (a nightly job) on whose behalf this handle writes; stage runs started through it
    /// name it as their parent in the ledger.
    parent: Option<RunId>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("uri", &self.uri).finish()
    }
}

/// Flushes the filesystem holding `dir` to stable storage.
fn sync_filesystem(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let f = std::fs::File::open(dir)?;
    // SAFETY: `f` is an open descriptor for the duration of the call; syncfs only reads it.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn lance(op: &'static str, table: &str) -> impl FnOnce(lancedb::Error) -> StoreError {
    let table = table.to_string();
    move |source| StoreError::Lance {
        op,
        table,
        source: Box::new(source),
    }
}

pub(crate) fn arrow(table: &str) -> impl FnOnce(arrow_schema::ArrowError) -> StoreError {
    let table = table.to_string();
    move |source| StoreError::Arrow { table, source }
}

impl Store {
    /// Opens the store at `uri` (a directory path or any lancedb URI), creating missing tables and
    /// checking the layout version and every table's schema.
    pub async fn open(uri: &str) -> Result<Self, StoreError> {
        if !uri.contains("://") {
            std::fs::create_dir_all(uri).map_err(|source| StoreError::Io {
                path: uri.into(),
                source,
            })?;
        }
        let db = lancedb::connect(uri)
            .execute()
            .await
            .map_err(lance("connect", uri))?;
        let store = Self {
            db,
            uri: uri.to_string(),
            parent: None,
        };
        store.check_layout_version().await?;
        store.ensure_tables().await?;
        store.record_layout_version().await?;
        Ok(store)
    }

    /// Where the store lives.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Makes every write committed so far durable. Lance does not fsync on local disk, so on an
    /// embedded store this flushes the store's filesystem (`syncfs`); on an object store a
    /// commit is durable when its PUT returns and there is nothing to do. Callers that delete a
    /// source once its rows are stored (the query-log mover) call this first.
    pub async fn sync(&self) -> Result<(), StoreError> {
        if self.uri.contains("://") {
            return Ok(());
        }
        let path = std::path::PathBuf::from(&self.uri);
        let p = path.clone();
        tokio::task::spawn_blocking(move || sync_filesystem(&p))
            .await
            .map_err(|e| StoreError::Io {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?
            .map_err(|source| StoreError::Io { path, source })
    }

    /// The same store, writing on behalf of run `parent`: every stage run recorded through the
    /// returned handle names it as its parent (how a nightly job's ledger row finds its stages).
    pub fn for_run(&self, parent: &RunId) -> Store {
        Store {
            parent: Some(parent.clone()),
            ..self.clone()
        }
    }

    /// The run this handle writes for, if any.
    pub fn parent_run(&self) -> Option<&RunId> {
        self.parent.as_ref()
    }

    async fn ensure_tables(&self) -> Result<(), StoreError> {
        let existing: HashSet<String> = self
            .db
            .table_names()
            .execute()
            .await
            .map_err(lance("list tables", ""))?
            .into_iter()
            .collect();
        for name in tables::ALL {
            let want = schema::schema_of(name)
                .ok_or_else(|| StoreError::UnknownTable { table: name.into() })?;
            if existing.contains(name) {
                let mut have = self.table_schema(name).await?;
                if self.add_missing_nullable(name, &want, &have).await? {
                    have = self.table_schema(name).await?;
                }
                check_schema(name, &want, &have)?;
            } else {
                self.db
                    .create_empty_table(name, want)
                    .execute()
                    .await
                    .map_err(lance("create", name))?;
            }
        }
        Ok(())
    }

    /// Migrates a table of an older layout: the nullable columns it lacks are added as all-null
    /// (a metadata-only Lance commit). Returns whether anything was added.
    async fn add_missing_nullable(
        &self,
        name: &str,
        want: &SchemaRef,
        have: &SchemaRef,
    ) -> Result<bool, StoreError> {
        let missing: Vec<arrow_schema::Field> = want
            .fields()
            .iter()
            .filter(|f| f.is_nullable() && have.field_with_name(f.name()).is_err())
            .map(|f| f.as_ref().clone())
            .collect();
        if missing.is_empty() {
            return Ok(false);
        }
        tracing::info!(table = name, columns = ?missing.iter().map(|f| f.name()).collect::<Vec<_>>(), "adding columns of the newer layout");
        self.table(name)
            .await?
            .add_columns()
            .transform(lancedb::table::NewColumnTransform::AllNulls(Arc::new(
                arrow_schema::Schema::new(missing),
            )))
            .execute()
            .await
            .map_err(lance("add columns", name))?;
        Ok(true)
    }

    /// Refuses a store written by a newer layout (before anything is created or changed).
    async fn check_layout_version(&self) -> Result<(), StoreError> {
        match self.stored_layout_version().await? {
            Some(v) if v > SCHEMA_VERSION => Err(StoreError::LayoutTooNew {
                found: v,
                supported: SCHEMA_VERSION,
            }),
            _ => Ok(()),
        }
    }

    async fn stored_layout_version(&self) -> Result<Option<u32>, StoreError> {
        if !self.table_names().await?.iter().any(|t| t == tables::META) {
            return Ok(None);
        }
        Ok(self
            .read_rows::<MetaRow>(None)
            .await?
            .into_iter()
            .filter(|m| m.key == "schema_version")
            .find_map(|m| m.value.parse::<u32>().ok()))
    }

    /// Older layouts differ only by tables that `ensure_tables` has just created: the upgrade is
    /// recorded so an older binary refuses the store instead of ignoring the new tables.
    async fn record_layout_version(&self) -> Result<(), StoreError> {
        let found = self.stored_layout_version().await?;
        if found == Some(SCHEMA_VERSION) {
            return Ok(());
        }
        if let Some(old) = found {
            tracing::info!(from = old, to = SCHEMA_VERSION, store = %self.uri, "store layout upgraded");
        }
        let row = MetaRow {
            key: "schema_version".into(),
            value: SCHEMA_VERSION.to_string(),
        };
        self.write_rows(&[row], Merge::Upsert).await?;
        Ok(())
    }

    pub(crate) async fn table(&self, name: &str) -> Result<lancedb::Table, StoreError> {
        self.db
            .open_table(name)
            .execute()
            .await
            .map_err(lance("open", name))
    }

    /// The Arrow schema of a table as stored.
    pub async fn table_schema(&self, name: &str) -> Result<SchemaRef, StoreError> {
        self.table(name)
            .await?
            .schema()
            .await
            .map_err(lance("schema", name))
    }

    /// Every table in the database (ours and any later stage's, e.g. `embeddings_<model>`).
    pub async fn table_names(&self) -> Result<Vec<String>, StoreError> {
        self.db
            .table_names()
            .execute()
            .await
            .map_err(lance("list tables", ""))
    }

    /// Rows in `table`, optionally only those matching a SQL `filter`.
    pub async fn count_rows(&self, table: &str, filter: Option<&str>) -> Result<usize, StoreError> {
        self.table(table)
            .await?
            .count_rows(filter.map(str::to_string))
            .await
            .map_err(lance("count", table))
    }

    /// Reads `table`, only the named columns (all when `None`), optionally filtered (SQL) and
    /// limited. Projection matters: it keeps image bytes on disk when they are not needed.
    pub async fn scan(
        &self,
        table: &str,
        columns: Option<&[&str]>,
        filter: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<RecordBatch>, StoreError> {
        let t = self.table(table).await?;
        let mut q = t.query();
        if let Some(cols) = columns {
            q = q.select(Select::columns(cols));
        }
        if let Some(f) = filter {
            q = q.only_if(f);
        }
        if let Some(n) = limit {
            q = q.limit(n);
        }
        let stream = q.execute().await.map_err(lance("scan", table))?;
        stream
            .try_collect::<Vec<_>>()
            .await
            .map_err(lance("scan", table))
    }

    /// Inserts samples not yet present; present ones (same bytes) are left untouched.
    pub async fn insert_samples(&self, rows: &[SampleRow]) -> Result<WriteResult, StoreError> {
        let mut seen = HashSet::new();
        let ids: Vec<&str> = rows.iter().map(|r| r.sample_id.as_str()).collect();
        let have = self.present(tables::SAMPLES, col::SAMPLE_ID, &ids).await?;
        let unique: Vec<SampleRow> = rows
            .iter()
            .filter(|r| !have.contains(r.sample_id.as_str()) && seen.insert(r.sample_id.clone()))
            .cloned()
            .collect();
        self.write_rows(&unique, Merge::InsertOnly).await
    }

    /// Writes labels: a new (sample, source, author) is inserted; an existing one is replaced only
    /// when its label or confidence changed, so re-sending the same labels writes nothing.
    pub async fn put_labels(&self, rows: &[LabelRow]) -> Result<WriteResult, StoreError> {
        let mut seen = HashSet::new();
        // The last opinion per key in the input wins.
        let mut unique: Vec<LabelRow> = rows
            .iter()
            .rev()
            .filter(|r| seen.insert(r.label_id()))
            .cloned()
            .collect();
        // Unchanged opinions are dropped here, so re-sending them makes no commit at all.
        let keys: Vec<String> = unique.iter().map(LabelRow::label_id).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let stored = self.stored_labels(&keys).await?;
        unique.retain(|r| {
            stored
                .get(&r.label_id())
                .is_none_or(|&(l, c)| l != r.label.as_u8() || c != r.confidence)
        });
        self.write_rows(&unique, Merge::UpsertChanged(LABEL_CHANGED))
            .await
    }

    /// Inserts predictions not yet present (keyed by request id).
    pub async fn insert_predictions(
        &self,
        rows: &[PredictionRow],
    ) -> Result<WriteResult, StoreError> {
        let mut seen = HashSet::new();
        let ids: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
        let have = self
            .present(tables::PREDICTIONS, col::REQUEST_ID, &ids)
            .await?;
        let unique: Vec<PredictionRow> = rows
            .iter()
            .filter(|r| !have.contains(r.request_id.as_str()) && seen.insert(r.request_id.clone()))
            .cloned()
            .collect();
        self.write_rows(&unique, Merge::InsertOnly).await
    }

    /// `(id, value)` pairs of a string column and an `f32` column of `table`, optionally filtered
    /// (SQL): the shape of every per-sample score a stage reads back (`head_scores.prob`,
    /// `mine_scores.hardness`). A null value is `None`.
    pub async fn id_values(
        &self,
        table: &str,
        id_col: &str,
        value_col: &str,
        filter: Option<&str>,
    ) -> Result<Vec<(String, Option<f32>)>, StoreError> {
        let mut out = Vec::new();
        for b in self
            .scan(table, Some(&[id_col, value_col]), filter, None)
            .await?
        {
            use arrow_array::Array;
            let id =
                schema::column::<arrow_array::StringArray>(&b, id_col).map_err(arrow(table))?;
            let v =
                schema::column::<arrow_array::Float32Array>(&b, value_col).map_err(arrow(table))?;
            out.extend(
                (0..b.num_rows())
                    .map(|i| (id.value(i).to_string(), (!v.is_null(i)).then(|| v.value(i)))),
            );
        }
        Ok(out)
    }

    /// Which of `keys` are stored in `table`'s key column `key`.
    pub async fn present(
        &self,
        table: &str,
        key: &str,
        keys: &[&str],
    ) -> Result<HashSet<String>, StoreError> {
        let mut out = HashSet::new();
        for chunk in keys.chunks(KEY_CHUNK) {
            for b in self
                .scan(table, Some(&[key]), Some(&in_list(key, chunk)), None)
                .await?
            {
                let c =
                    schema::column::<arrow_array::StringArray>(&b, key).map_err(arrow(table))?;
                out.extend(c.iter().flatten().map(str::to_string));
            }
        }
        Ok(out)
    }

    /// Stored (label, confidence) of the given label ids.
    async fn stored_labels(&self, keys: &[&str]) -> Result<HashMap<String, (u8, f32)>, StoreError> {
        let mut out = HashMap::new();
        let cols = [col::LABEL_ID, col::LABEL, col::CONFIDENCE];
        for chunk in keys.chunks(KEY_CHUNK) {
            let filter = in_list(col::LABEL_ID, chunk);
            for b in self
                .scan(tables::LABELS, Some(&cols), Some(&filter), None)
                .await?
            {
                let t = tables::LABELS;
                let id = schema::column::<arrow_array::StringArray>(&b, col::LABEL_ID)
                    .map_err(arrow(t))?;
                let l =
                    schema::column::<arrow_array::UInt8Array>(&b, col::LABEL).map_err(arrow(t))?;
                let c = schema::column::<arrow_array::Float32Array>(&b, col::CONFIDENCE)
                    .map_err(arrow(t))?;
                for i in 0..b.num_rows() {
                    out.insert(id.value(i).to_string(), (l.value(i), c.value(i)));
                }
            }
        }
        Ok(out)
    }

    /// Writes or updates one run in the ledger.
    pub async fn record_run(&self, run: &RunRow) -> Result<WriteResult, StoreError> {
        self.write_rows(std::slice::from_ref(run), Merge::Upsert)
            .await
    }

    /// Every run in the ledger, oldest first.
    pub async fn runs(&self) -> Result<Vec<RunRow>, StoreError> {
        let mut out = self.read_rows::<RunRow>(None).await?;
        out.sort_by_key(|r| r.started_at);
        Ok(out)
    }

    /// The rows of `R`'s table (optionally filtered, SQL), typed.
    pub(crate) async fn read_rows<R: TableRow>(
        &self,
        filter: Option<&str>,
    ) -> Result<Vec<R>, StoreError> {
        let mut out = Vec::new();
        for b in self.scan(R::TABLE, None, filter, None).await? {
            out.extend(rows::from_batch::<R>(&b).map_err(arrow(R::TABLE))?);
        }
        Ok(out)
    }

    /// Writes typed rows into their table in one commit.
    pub(crate) async fn write_rows<R: TableRow>(
        &self,
        rows: &[R],
        how: Merge,
    ) -> Result<WriteResult, StoreError> {
        let batch = rows::to_batch(rows).map_err(arrow(R::TABLE))?;
        self.merge(R::TABLE, batch, how).await
    }

    /// Samples matching a SQL filter (all columns, images included).
    pub async fn samples(&self, filter: Option<&str>) -> Result<Vec<SampleRow>, StoreError> {
        self.read_rows(filter).await
    }

    /// Every label row.
    pub async fn labels(&self) -> Result<Vec<LabelRow>, StoreError> {
        self.read_rows(None).await
    }

    /// Every prediction row.
    pub async fn predictions(&self) -> Result<Vec<PredictionRow>, StoreError> {
        self.read_rows(None).await
    }

    /// One effective label per labelled sample (precedence rule applied).
    pub async fn effective_labels(&self) -> Result<Vec<EffectiveLabel>, StoreError> {
        Ok(effective_labels(&self.labels().await?))
    }

    /// Current version of every table.
    pub async fn versions(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut out = BTreeMap::new();
        for name in self.table_names().await? {
            let v = self
                .table(&name)
                .await?
                .version()
                .await
                .map_err(lance("version", &name))?;
            out.insert(name, v);
        }
        Ok(out)
    }

    /// Tags the current version of every table with `name`, so the exact data can be read back later
    /// (a training run pins its inputs this way). Refuses a name that already exists.
    pub async fn snapshot(&self, name: &SnapshotName) -> Result<Snapshot, StoreError> {
        let tag = name.to_tag();
        let versions = self.versions().await?;
        if !self.snapshot_versions(name).await?.is_empty() {
            return Err(StoreError::SnapshotExists {
                name: name.to_string(),
            });
        }
        for (table, version) in &versions {
            let t = self.table(table).await?;
            let mut tags = t.tags().await.map_err(lance("tags", table))?;
            tags.create(&tag, *version)
                .await
                .map_err(lance("create tag", table))?;
        }
        Ok(Snapshot {
            name: name.clone(),
            versions,
        })
    }

    async fn snapshot_versions(
        &self,
        name: &SnapshotName,
    ) -> Result<BTreeMap<String, u64>, StoreError> {
        let tag = name.to_tag();
        let mut out = BTreeMap::new();
        for table in self.table_names().await? {
            let t = self.table(&table).await?;
            let tags = t.tags().await.map_err(lance("tags", &table))?;
            if let Some(contents) = tags
                .list()
                .await
                .map_err(lance("list tags", &table))?
                .get(&tag)
            {
                out.insert(table, contents.version);
            }
        }
        Ok(out)
    }

    /// Every snapshot with the table versions it pins.
    pub async fn snapshots(&self) -> Result<Vec<Snapshot>, StoreError> {
        let mut by_name: BTreeMap<SnapshotName, BTreeMap<String, u64>> = BTreeMap::new();
        for table in self.table_names().await? {
            let t = self.table(&table).await?;
            let tags = t.tags().await.map_err(lance("tags", &table))?;
            for (tag, contents) in tags.list().await.map_err(lance("list tags", &table))? {
                by_name
                    .entry(SnapshotName::from_tag(&tag))
                    .or_default()
                    .insert(table.clone(), contents.version);
            }
        }
        Ok(by_name
            .into_iter()
            .map(|(name, versions)| Snapshot { name, versions })
            .collect())
    }

    /// Reads a table as it was when `name` was taken: only the named columns (all when `None`),
    /// optionally filtered (SQL).
    pub async fn scan_at(
        &self,
        name: &SnapshotName,
        table: &str,
        columns: Option<&[&str]>,
        filter: Option<&str>,
    ) -> Result<Vec<RecordBatch>, StoreError> {
        let t = self.table_at(name, table).await?;
        let mut q = t.query();
        if let Some(cols) = columns {
            q = q.select(Select::columns(cols));
        }
        if let Some(f) = filter {
            q = q.only_if(f);
        }
        let stream = q.execute().await.map_err(lance("scan", table))?;
        stream
            .try_collect::<Vec<_>>()
            .await
            .map_err(lance("scan", table))
    }

    async fn table_at(
        &self,
        name: &SnapshotName,
        table: &str,
    ) -> Result<lancedb::Table, StoreError> {
        let t = self.table(table).await?;
        t.checkout_tag(&name.to_tag())
            .await
            .map_err(|_| StoreError::SnapshotNotFound {
                name: name.to_string(),
                table: table.to_string(),
            })?;
        Ok(t)
    }

    /// Streams `table` (all columns, optionally filtered) batch by batch, so a reader of the
    /// images holds one batch of them at a time instead of the table.
    pub async fn stream(
        &self,
        table: &str,
        filter: Option<&str>,
    ) -> Result<lancedb::arrow::SendableRecordBatchStream, StoreError> {
        let t = self.table(table).await?;
        let mut q = t.query();
        if let Some(f) = filter {
            q = q.only_if(f);
        }
        q.execute().await.map_err(lance("scan", table))
    }

    /// [`Store::stream`] of the table as it was when `name` was taken.
    pub async fn stream_at(
        &self,
        name: &SnapshotName,
        table: &str,
        filter: Option<&str>,
    ) -> Result<lancedb::arrow::SendableRecordBatchStream, StoreError> {
        let t = self.table_at(name, table).await?;
        let mut q = t.query();
        if let Some(f) = filter {
            q = q.only_if(f);
        }
        q.execute().await.map_err(lance("scan", table))
    }

    /// Removes a snapshot's tags (the data stays until maintenance prunes untagged versions).
    pub async fn delete_snapshot(&self, name: &SnapshotName) -> Result<(), StoreError> {
        let tag = name.to_tag();
        let tables = self.snapshot_versions(name).await?;
        if tables.is_empty() {
            return Err(StoreError::SnapshotNotFound {
                name: name.to_string(),
                table: "*".into(),
            });
        }
        for table in tables.keys() {
            let t = self.table(table).await?;
            let mut tags = t.tags().await.map_err(lance("tags", table))?;
            tags.delete(&tag)
                .await
                .map_err(lance("delete tag", table))?;
        }
        Ok(())
    }

    pub(crate) async fn merge(
        &self,
        table: &str,
        batch: RecordBatch,
        how: Merge,
    ) -> Result<WriteResult, StoreError> {
        let t = self.table(table).await?;
        if batch.num_rows() == 0 {
            let version = t.version().await.map_err(lance("version", table))?;
            return Ok(WriteResult {
                version,
                ..Default::default()
            });
        }
        let key = schema::key_of(table);
        let mut m = t.merge_insert(&[key]);
        m.when_not_matched_insert_all();
        match how {
            Merge::InsertOnly => {}
            Merge::Upsert => {
                m.when_matched_update_all(None);
            }
            Merge::UpsertChanged(cond) => {
                m.when_matched_update_all(Some(cond.to_string()));
            }
        }
        let schema = batch.schema();
        let reader = RecordBatchIterator::new(vec![Ok(batch)], schema);
        let r = m
            .execute(Box::new(reader))
            .await
            .map_err(lance("merge_insert", table))?;
        let version = if r.version > 0 {
            r.version
        } else {
            t.version().await.map_err(lance("version", table))?
        };
        Ok(WriteResult {
            inserted: r.num_inserted_rows,
            updated: r.num_updated_rows,
            version,
        })
    }
}

/// Keys per `IN (…)` filter when checking what is already stored.
const KEY_CHUNK: usize = 512;

/// `col IN ('a','b',…)`; the values are keys we built (hex ids, label ids), quotes doubled anyway.
fn in_list(col: &str, values: &[&str]) -> String {
    let v: Vec<String> = values
        .iter()
        .map(|s| format!("'{}'", s.replace('\'', "''")))
        .collect();
    format!("{col} IN ({})", v.join(","))
}

/// The condition under which an incoming label replaces the stored one of the same key.
const LABEL_CHANGED: &str =
    "target.label != source.label OR target.confidence != source.confidence";

#[derive(Debug, Clone, Copy)]
pub(crate) enum Merge {
    InsertOnly,
    Upsert,
    UpsertChanged(&'static str),
}

/// Field names and types must match; metadata and nullability differences are tolerated.
pub(crate) fn check_schema(
    table: &str,
    want: &SchemaRef,
    have: &SchemaRef,
) -> Result<(), StoreError> {
    let mut problems = Vec::new();
    for f in want.fields() {
        match have.field_with_name(f.name()) {
            Ok(h) if h.data_type().equals_datatype(f.data_type()) => {}
            Ok(h) => problems.push(format!(
                "{} is {} (expected {})",
                f.name(),
                h.data_type(),
                f.data_type()
            )),
            Err(_) => problems.push(format!("{} is missing", f.name())),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StoreError::SchemaMismatch {
            table: table.into(),
            problems: problems.join("; "),
        })
    }
}

/// A shared handle for code that needs the store from several tasks.
pub type SharedStore = Arc<Store>;
