//! The training data: stored features joined with effective labels and sample facts, read at a
//! snapshot, and split deterministically by group.
//!
//! Splits are drawn per *group*, never per sample, so that near-identical images cannot sit on
//! both sides of the line (FiftyOne calls these leaky splits): the frames of one drive (a
//! `train.split.group_tags` value, NATIX `seq_id` by default), the images of one synthesis
//! request, an edit and the frame it was made from, and the duplicate groups (exact, re-encoded,
//! near) of the mining run a head is sliced by. A sample without any group is its own group and is
//! drawn from its id exactly as before groups existed, so the eval set of an ungrouped store is
//! frozen per sample. Real data fills the train, calibration and eval splits; synthetic images
//! train, or form the separate `eval_synthetic` set (never mixed into the real eval set).

use std::collections::{BTreeMap, HashMap};

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use serde::{Deserialize, Serialize};

use super::TrainError;
use crate::store::rows::from_batch;
use crate::store::schema::{col, tables};
use crate::store::{
    LabelRow, RunId, RunKind, RunRow, RunStatus, SampleId, SampleSource, SnapshotName, Store,
    StoreError, VECTOR, augmented_table, collect_augmented, collect_vectors, effective_labels,
    embeddings_table,
};

/// How samples are split (`[train.split]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitConfig {
    /// Share of real groups in the frozen eval set.
    pub eval_share: f64,
    /// Share of real groups used only to calibrate the probability.
    pub calib_share: f64,
    /// Share of synthetic groups (a request, or an unrequested image) held out as the
    /// `eval_synthetic` set, to measure real-vs-synthetic; 0 trains on every synthetic image.
    pub synthetic_eval_share: f64,
    /// Tag keys whose value names a group that must not straddle splits (the first one a sample
    /// carries counts). NATIX frames of one drive share a `seq_id`.
    pub group_tags: Vec<String>,
    /// Duplicate links of the mining run join groups only while the joined group holds at most
    /// this many base groups: the near-duplicate threshold links a fixed share of pairs, and
    /// unbounded chaining can glue a large part of a dense cluster into one "group".
    pub max_duplicate_group: usize,
    /// Tag keys (`key=value` in `samples.tags`) reported as evaluation slices, besides source and era.
    pub slice_tags: Vec<String>,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            eval_share: 0.15,
            calib_share: 0.10,
            synthetic_eval_share: 0.15,
            group_tags: vec!["seq_id".into()],
            max_duplicate_group: 16,
            slice_tags: vec![
                "daytime".into(),
                "weather".into(),
                "environment".into(),
                "quality".into(),
            ],
        }
    }
}

impl SplitConfig {
    /// Rejects shares that cannot be drawn.
    pub fn validate(&self) -> Result<(), String> {
        let share = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("train.split.{name} = {v} is not in [0, 1]"))
            }
        };
        share("eval_share", self.eval_share)?;
        share("calib_share", self.calib_share)?;
        share("synthetic_eval_share", self.synthetic_eval_share)?;
        if self.eval_share + self.calib_share >= 1.0 {
            return Err(format!(
                "train.split.eval_share + calib_share = {} leaves nothing to train on",
                self.eval_share + self.calib_share
            ));
        }
        if self.max_duplicate_group == 0 {
            return Err("train.split.max_duplicate_group must be at least 1".into());
        }
        Ok(())
    }
}

/// Which part of the data a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Calib,
    Eval,
    /// Held-out synthetic images: evaluated on their own, never trained on, never in `eval`.
    EvalSynthetic,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Calib => "calib",
            Split::Eval => "eval",
            Split::EvalSynthetic => "eval_synthetic",
        }
    }
}

/// A uniform number in [0,1) from 8 bytes of the sample id (hex) starting at byte `at`.
fn unit(id: &SampleId, at: usize) -> f64 {
    let hex = &id.as_str()[at * 2..at * 2 + 16];
    u64::from_str_radix(hex, 16).unwrap_or(0) as f64 / 2f64.powi(64)
}

/// A uniform number in [0,1) from a group key: the key's own bytes when it is a sample id (so a
/// sample alone in its group draws exactly what it drew before groups), else its sha256.
fn unit_of_key(key: &str, at: usize) -> f64 {
    match key.parse::<SampleId>() {
        Ok(id) => unit(&id, at),
        Err(_) => {
            let hex = super::model::sha256_hex(key.as_bytes());
            u64::from_str_radix(&hex[at * 2..at * 2 + 16], 16).unwrap_or(0) as f64 / 2f64.powi(64)
        }
    }
}

/// The split a real group draws.
fn real_split(u: f64, cfg: &SplitConfig) -> Split {
    if u < cfg.eval_share {
        Split::Eval
    } else if u < cfg.eval_share + cfg.calib_share {
        Split::Calib
    } else {
        Split::Train
    }
}

/// The split of a sample that is alone in its group: synthetic ones train or are held out as
/// `eval_synthetic`; real ones by their id. [`Splits::assign`] is the rule for grouped data.
pub fn split_of(id: &SampleId, source: &str, cfg: &SplitConfig) -> Split {
    let u = unit(id, 0);
    if source == SampleSource::Synthetic.as_str() {
        if u < cfg.synthetic_eval_share {
            Split::EvalSynthetic
        } else {
            Split::Train
        }
    } else {
        real_split(u, cfg)
    }
}

/// The cross-validation fold of a training sample alone in its group (independent of its split
/// draw).
pub fn fold_of(id: &SampleId, folds: usize) -> usize {
    fold_of_group(id.as_str(), folds)
}

/// The cross-validation fold of a group: every member of a group is held out by the same fold,
/// so out-of-fold scores are not inflated by a near-twin in the fold's training data.
pub fn fold_of_group(group: &str, folds: usize) -> usize {
    ((unit_of_key(group, 8) * folds as f64) as usize).min(folds.saturating_sub(1))
}

/// What the split of one sample depends on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SplitFacts {
    /// `samples.source` (`dataset`, `synthetic`, …).
    pub source: String,
    /// `samples.tags` (`key=value`).
    pub tags: Vec<String>,
}

impl SplitFacts {
    fn synthetic(&self) -> bool {
        self.source == SampleSource::Synthetic.as_str()
    }

    fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find_map(|t| t.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .filter(|v| !v.is_empty())
    }
}

/// Where one sample landed.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub split: Split,
    /// The key of its group (a sample id for a sample alone): the unit of folds.
    pub group: String,
}

/// The split of every sample of a store (see the module docs for the rule).
#[derive(Debug, Clone, Default)]
pub struct Splits {
    placed: HashMap<String, Placement>,
    /// Duplicate links that were not followed because the joined group would exceed
    /// `max_duplicate_group` base groups.
    pub capped_links: usize,
}

/// Union-find over group indices, with the number of base groups per root.
struct Groups {
    parent: Vec<usize>,
    size: Vec<usize>,
}

impl Groups {
    fn new(n: usize) -> Self {
        Self {
            parent: (0..n).collect(),
            size: vec![1; n],
        }
    }

    fn find(&mut self, mut a: usize) -> usize {
        while self.parent[a] != a {
            self.parent[a] = self.parent[self.parent[a]];
            a = self.parent[a];
        }
        a
    }

    /// Joins the groups of `a` and `b` if the result holds at most `cap` base groups.
    fn join(&mut self, a: usize, b: usize, cap: usize) -> bool {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return true;
        }
        if self.size[ra] + self.size[rb] > cap {
            return false;
        }
        let (big, small) = if ra < rb { (ra, rb) } else { (rb, ra) };
        self.parent[small] = big;
        self.size[big] += self.size[small];
        true
    }
}

impl Splits {
    /// Splits `facts` (sample id → facts) given the duplicate links `(a, b)` of a mining run.
    ///
    /// 1. Each sample gets a base group: a synthetic image made from a stored frame
    ///    (`synth_source=<id>`) joins that frame's group; else the first `group_tags` value it
    ///    carries; else its synthesis request (`synth_request=<id>`); else itself.
    /// 2. Duplicate links join base groups while the result stays within
    ///    `max_duplicate_group` base groups (links are taken in sorted order: deterministic).
    /// 3. A group with any real member draws its split from its smallest real base key (through
    ///    sha256, so a large group is not biased towards the low draws that mean `eval`); its
    ///    synthetic members train when it trains and are held out as `eval_synthetic` otherwise.
    ///    A synthetic-only group trains or is held out by `synthetic_eval_share`.
    pub fn assign(
        facts: &BTreeMap<String, SplitFacts>,
        links: &[(String, String)],
        cfg: &SplitConfig,
    ) -> Self {
        // Base keys, each a node of the union-find.
        let mut key_index: HashMap<String, usize> = HashMap::new();
        let mut keys: Vec<String> = Vec::new();
        let mut node = |key: String, keys: &mut Vec<String>| -> usize {
            *key_index.entry(key.clone()).or_insert_with(|| {
                keys.push(key);
                keys.len() - 1
            })
        };
        let own_key = |id: &str, f: &SplitFacts| -> String {
            if let Some((k, v)) = cfg
                .group_tags
                .iter()
                .find_map(|k| f.tag(k).map(|v| (k.as_str(), v)))
            {
                format!("{k}={v}")
            } else if let Some(r) = f.tag("synth_request").filter(|_| f.synthetic()) {
                format!("synth_request={r}")
            } else {
                id.to_string()
            }
        };
        // A made-from chain is followed to its first frame that is not itself made from a
        // stored frame (bounded: a cycle of tags cannot loop).
        let root_of = |id: &str| -> String {
            let mut cur = id;
            for _ in 0..8 {
                match facts.get(cur) {
                    Some(f) if f.synthetic() => match f.tag("synth_source") {
                        Some(src) if src != cur && facts.contains_key(src) => cur = src,
                        _ => break,
                    },
                    _ => break,
                }
            }
            cur.to_string()
        };
        let mut sample_node: HashMap<&str, usize> = HashMap::with_capacity(facts.len());
        for (id, f) in facts {
            let anchor = root_of(id);
            let key = match facts.get(&anchor) {
                Some(af) => own_key(&anchor, af),
                None => own_key(id, f),
            };
            sample_node.insert(id.as_str(), node(key, &mut keys));
        }
        let mut groups = Groups::new(keys.len());
        let mut sorted: Vec<(&str, &str)> = links
            .iter()
            .map(|(a, b)| {
                if a <= b {
                    (a.as_str(), b.as_str())
                } else {
                    (b.as_str(), a.as_str())
                }
            })
            .collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut capped_links = 0;
        for (a, b) in sorted {
            let (Some(&na), Some(&nb)) = (sample_node.get(a), sample_node.get(b)) else {
                continue;
            };
            if !groups.join(na, nb, cfg.max_duplicate_group) {
                capped_links += 1;
            }
        }
        // Per root: its smallest real base key, else its smallest key; and its base-group count.
        let mut rep: HashMap<usize, (bool, String)> = HashMap::new();
        for (id, f) in facts {
            let n = sample_node[id.as_str()];
            let root = groups.find(n);
            let cand = (!f.synthetic(), keys[n].clone());
            rep.entry(root)
                .and_modify(|cur| {
                    // Real beats synthetic; then the smaller key.
                    if (cand.0 && !cur.0) || (cand.0 == cur.0 && cand.1 < cur.1) {
                        *cur = cand.clone();
                    }
                })
                .or_insert(cand);
        }
        let mut placed = HashMap::with_capacity(facts.len());
        for (id, f) in facts {
            let root = groups.find(sample_node[id.as_str()]);
            let (has_real, key) = &rep[&root];
            // A group joined by duplicate links is named apart from its members, so its draw goes
            // through sha256 (its smallest member id is not a uniform draw).
            let key = if groups.size[root] > 1 {
                format!("group:{key}")
            } else {
                key.clone()
            };
            let u = unit_of_key(&key, 0);
            let split = match (*has_real, f.synthetic()) {
                (true, false) => real_split(u, cfg),
                (true, true) if real_split(u, cfg) == Split::Train => Split::Train,
                (true, true) => Split::EvalSynthetic,
                (false, _) if u < cfg.synthetic_eval_share => Split::EvalSynthetic,
                (false, _) => Split::Train,
            };
            placed.insert(id.clone(), Placement { split, group: key });
        }
        Self {
            placed,
            capped_links,
        }
    }

    /// Where sample `id` landed (`None` for a sample the facts did not hold).
    pub fn get(&self, id: &str) -> Option<&Placement> {
        self.placed.get(id)
    }

    /// The split of `id`, or the rule for a sample alone when the facts did not hold it.
    pub fn split(&self, id: &SampleId, source: &str, cfg: &SplitConfig) -> Split {
        self.get(id.as_str())
            .map_or_else(|| split_of(id, source, cfg), |p| p.split)
    }

    pub fn len(&self) -> usize {
        self.placed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.placed.is_empty()
    }

    /// Every placement, by sample id.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Placement)> {
        self.placed.iter()
    }
}

/// Labelled, embedded samples in one contiguous feature matrix.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub ids: Vec<SampleId>,
    /// Row-major `len × dim`.
    pub x: Vec<f32>,
    pub dim: usize,
    pub y: Vec<u8>,
    pub split: Vec<Split>,
    /// The group key of each sample (see [`Splits`]): folds are drawn per group.
    pub group: Vec<String>,
    /// `key=value` slice memberships per sample (source, era, configured tags).
    pub slices: Vec<Vec<String>>,
    /// Embedded samples without an effective label (validator traffic, mostly): scored by the
    /// head and the ensemble for mining, never trained on. Row-major like `x`.
    pub pool_ids: Vec<SampleId>,
    pub pool_x: Vec<f32>,
    /// Validator-augmented copies of the rows (`augmented_<model id>`), kept apart from `x` so a
    /// clean metric never sees one: training may add them, evaluation reports them on their own.
    pub aug: Augmented,
}

/// Distorted copies of dataset rows, in (row, seed, copy) order.
#[derive(Debug, Clone, Default)]
pub struct Augmented {
    /// The dataset row each copy was made from (its label, split and group).
    pub of: Vec<usize>,
    /// Row-major `len × dim`.
    pub x: Vec<f32>,
    pub level: Vec<u8>,
    /// `<code>=<strength>` of the distortions that ran.
    pub distortions: Vec<Vec<String>>,
}

impl Augmented {
    pub fn len(&self) -> usize {
        self.of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.of.is_empty()
    }

    /// Features of copy `j`.
    pub fn row(&self, j: usize, dim: usize) -> &[f32] {
        &self.x[j * dim..(j + 1) * dim]
    }

    /// Copies whose source row passes `keep`.
    pub fn rows(&self, keep: impl Fn(usize) -> bool) -> Vec<usize> {
        (0..self.len()).filter(|&j| keep(self.of[j])).collect()
    }
}

/// The rows of one split, as a sub-dataset.
pub struct Part {
    pub x: Vec<f32>,
    pub y: Vec<u8>,
    /// Indices into the parent dataset.
    pub rows: Vec<usize>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Features of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.dim..(i + 1) * self.dim]
    }

    /// The rows selected by `keep`.
    pub fn part(&self, keep: impl Fn(usize) -> bool) -> Part {
        let rows: Vec<usize> = (0..self.len()).filter(|&i| keep(i)).collect();
        let mut x = Vec::with_capacity(rows.len() * self.dim);
        for &i in &rows {
            x.extend_from_slice(self.row(i));
        }
        Part {
            y: rows.iter().map(|&i| self.y[i]).collect(),
            x,
            rows,
        }
    }

    /// The cross-validation fold of row `i` (its group's).
    pub fn fold(&self, i: usize, folds: usize) -> usize {
        match self.group.get(i) {
            Some(g) => fold_of_group(g, folds),
            None => fold_of(&self.ids[i], folds),
        }
    }

    /// Samples per (split, label).
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (s, y) in self.split.iter().zip(&self.y) {
            *out.entry(format!("{}/{}", s.as_str(), y)).or_default() += 1;
        }
        out
    }
}

/// Reads a table now or at a snapshot.
async fn read(
    store: &Store,
    at: Option<&SnapshotName>,
    table: &str,
    cols: &[&str],
) -> Result<Vec<RecordBatch>, TrainError> {
    Ok(match at {
        Some(s) => store.scan_at(s, table, Some(cols), None).await?,
        None => store.scan(table, Some(cols), None, None).await?,
    })
}

/// Every vector of `embedding_model` (at the snapshot), with its dimension.
pub async fn read_vectors(
    store: &Store,
    at: Option<&SnapshotName>,
    embedding_model: &str,
) -> Result<(Vec<SampleId>, Vec<f32>, usize), TrainError> {
    let table = embeddings_table(embedding_model);
    if !store.table_names().await?.contains(&table) {
        return Err(TrainError::NoEmbeddings {
            model: embedding_model.to_string(),
            available: store.embedding_models().await?,
        });
    }
    let batches = read(store, at, &table, &[col::SAMPLE_ID, VECTOR])
        .await
        .map_err(|e| match e {
            TrainError::Store(crate::store::StoreError::SnapshotNotFound { name, .. }) => {
                TrainError::SnapshotLacksModel {
                    snapshot: name,
                    model: embedding_model.to_string(),
                }
            }
            other => other,
        })?;
    let rows = collect_vectors(&table, &batches)?;
    if let Some((sample_id, index)) = rows.non_finite.into_iter().next() {
        return Err(TrainError::NonFinite { sample_id, index });
    }
    // Rows in sample-id order, not storage order: the same snapshot gives the same training run
    // (and weights) however its fragments happen to be laid out (compaction, crash and resume).
    let mut order: Vec<usize> = (0..rows.ids.len()).collect();
    order.sort_by(|&a, &b| rows.ids[a].cmp(&rows.ids[b]));
    let (mut ids, mut x) = (Vec::with_capacity(rows.ids.len()), Vec::new());
    for i in order {
        let Ok(sid) = rows.ids[i].parse::<SampleId>() else {
            continue;
        };
        ids.push(sid);
        x.extend_from_slice(&rows.data[i * rows.dim..(i + 1) * rows.dim]);
    }
    let dim = rows.dim;
    Ok((ids, x, dim))
}

/// What the loader knows of one sample: the facts its split depends on and its slice names.
struct Facts {
    split: SplitFacts,
    slices: Vec<String>,
}

/// Source, era and tags of every sample (at the snapshot).
async fn read_facts(
    store: &Store,
    at: Option<&SnapshotName>,
) -> Result<BTreeMap<String, Facts>, TrainError> {
    let batches = read(
        store,
        at,
        tables::SAMPLES,
        &[col::SAMPLE_ID, col::SOURCE, col::ERA, col::TAGS],
    )
    .await?;
    let mut out = BTreeMap::new();
    for b in &batches {
        let cols = (
            b.column_by_name(col::SAMPLE_ID)
                .and_then(|c| c.as_string_opt::<i32>()),
            b.column_by_name(col::SOURCE)
                .and_then(|c| c.as_string_opt::<i32>()),
            b.column_by_name(col::ERA)
                .and_then(|c| c.as_string_opt::<i32>()),
            b.column_by_name(col::TAGS)
                .and_then(|c| c.as_list_opt::<i32>()),
        );
        let (Some(id), Some(source), Some(era), Some(tags)) = cols else {
            return Err(TrainError::BadTable {
                table: tables::SAMPLES.into(),
                why: "sample columns missing or mistyped".into(),
            });
        };
        for i in 0..b.num_rows() {
            let t = tags.value(i);
            let tags: Vec<String> = t
                .as_string_opt::<i32>()
                .map(|t| t.iter().flatten().map(str::to_string).collect())
                .unwrap_or_default();
            let mut slices = vec![
                format!("source={}", source.value(i)),
                format!("era={}", era.value(i)),
            ];
            slices.extend(tags.iter().cloned());
            out.insert(
                id.value(i).to_string(),
                Facts {
                    split: SplitFacts {
                        source: source.value(i).to_string(),
                        tags,
                    },
                    slices,
                },
            );
        }
    }
    Ok(out)
}

/// The duplicate links `(a, b)` of mining run `run` (none without one), read at `at`.
/// The duplicate links (pairs of sample ids) of mining run `run` as of `at`: what joins split
/// groups beyond drives and requests. Empty without a run.
pub async fn read_links(
    store: &Store,
    at: Option<&SnapshotName>,
    run: Option<&RunId>,
) -> Result<Vec<(String, String)>, TrainError> {
    let Some(run) = run else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for b in read(
        store,
        at,
        tables::DUPLICATES,
        &[col::RUN_ID, col::SAMPLE_A, col::SAMPLE_B],
    )
    .await?
    {
        let (Some(r), Some(a), Some(bb)) = (
            b.column_by_name(col::RUN_ID)
                .and_then(|c| c.as_string_opt::<i32>()),
            b.column_by_name(col::SAMPLE_A)
                .and_then(|c| c.as_string_opt::<i32>()),
            b.column_by_name(col::SAMPLE_B)
                .and_then(|c| c.as_string_opt::<i32>()),
        ) else {
            return Err(TrainError::BadTable {
                table: tables::DUPLICATES.into(),
                why: "run_id, sample_a or sample_b missing or mistyped".into(),
            });
        };
        for i in 0..b.num_rows() {
            if r.value(i) == run.as_str() {
                out.push((a.value(i).to_string(), bb.value(i).to_string()));
            }
        }
    }
    Ok(out)
}

/// The splits of every sample in the store at `at` (now when `None`), grouped by the duplicate
/// links of mining run `links_from` (the run a head is sliced by: [`slice_run`]). Training,
/// the nightly label buying and synthesis all ask this, so they agree on what is held out.
pub async fn read_splits(
    store: &Store,
    at: Option<&SnapshotName>,
    cfg: &SplitConfig,
    links_from: Option<&RunId>,
) -> Result<Splits, TrainError> {
    let facts = read_facts(store, at).await?;
    let links = read_links(store, at, links_from).await?;
    let split_facts: BTreeMap<String, SplitFacts> =
        facts.into_iter().map(|(id, f)| (id, f.split)).collect();
    Ok(Splits::assign(&split_facts, &links, cfg))
}

/// The mining run whose clusters become evaluation slices for data read at `at`: the latest
/// successful one in the ledger as of the snapshot (now when `None`). A head records it in its card
/// so that later mining runs never change how it is judged.
pub async fn slice_run(
    store: &Store,
    at: Option<&SnapshotName>,
) -> Result<Option<RunId>, TrainError> {
    let batches = read(
        store,
        at,
        tables::RUNS,
        &crate::store::schema::RUNS_BASE_COLUMNS,
    )
    .await?;
    let mut latest: Option<RunRow> = None;
    for b in &batches {
        for r in from_batch::<RunRow>(b).map_err(|e| TrainError::BadTable {
            table: tables::RUNS.into(),
            why: e.to_string(),
        })? {
            if r.kind == RunKind::Mine
                && r.status == RunStatus::Ok
                && latest.as_ref().is_none_or(|l| r.started_at > l.started_at)
            {
                latest = Some(r);
            }
        }
    }
    Ok(latest.map(|r| r.run_id))
}

/// The cluster of every sample in mining run `run` (empty without one), read at `at`, so
/// evaluations report per-cluster slices.
async fn clusters_of(
    store: &Store,
    at: Option<&SnapshotName>,
    run: Option<&RunId>,
) -> Result<HashMap<String, u32>, TrainError> {
    let Some(run) = run else {
        return Ok(HashMap::new());
    };
    let mut out = HashMap::new();
    for b in read(
        store,
        at,
        tables::MINE_SCORES,
        &[col::RUN_ID, col::SAMPLE_ID, col::CLUSTER],
    )
    .await?
    {
        let (Some(r), Some(id), Some(c)) = (
            b.column_by_name(col::RUN_ID)
                .and_then(|c| c.as_string_opt::<i32>()),
            b.column_by_name(col::SAMPLE_ID)
                .and_then(|c| c.as_string_opt::<i32>()),
            b.column_by_name(col::CLUSTER)
                .and_then(|c| c.as_primitive_opt::<arrow_array::types::UInt32Type>()),
        ) else {
            return Err(TrainError::BadTable {
                table: tables::MINE_SCORES.into(),
                why: "run_id, sample_id or cluster missing or mistyped".into(),
            });
        };
        for i in 0..b.num_rows() {
            if r.value(i) == run.as_str() {
                out.insert(id.value(i).to_string(), c.value(i));
            }
        }
    }
    Ok(out)
}

/// Joins vectors, effective labels and sample facts at `at` (now when `None`); evaluation slices
/// include the clusters of mining run `slices_from`.
pub async fn load(
    store: &Store,
    at: Option<&SnapshotName>,
    embedding_model: &str,
    cfg: &SplitConfig,
    slices_from: Option<&RunId>,
) -> Result<Dataset, TrainError> {
    let (ids, x, dim) = read_vectors(store, at, embedding_model).await?;
    let mut label_rows = Vec::new();
    for b in read(
        store,
        at,
        tables::LABELS,
        &[
            col::LABEL_ID,
            col::SAMPLE_ID,
            col::LABEL,
            col::SOURCE,
            col::CONFIDENCE,
            col::AUTHOR,
            col::TS,
        ],
    )
    .await?
    {
        label_rows.extend(
            from_batch::<LabelRow>(&b).map_err(|e| TrainError::BadTable {
                table: tables::LABELS.into(),
                why: e.to_string(),
            })?,
        );
    }
    let labels: HashMap<String, u8> = effective_labels(&label_rows)
        .into_iter()
        .map(|l| (l.sample_id.to_string(), l.label.as_u8()))
        .collect();
    let facts = read_facts(store, at).await?;
    let links = read_links(store, at, slices_from).await?;
    let splits = Splits::assign(
        &facts
            .iter()
            .map(|(id, f)| (id.clone(), f.split.clone()))
            .collect(),
        &links,
        cfg,
    );
    let clusters = clusters_of(store, at, slices_from).await?;
    // Quality issues of samples scored after they were ingested (the backfill of stores older
    // than the image_quality table): their tags lack them, the table has them.
    let quality = if cfg.slice_tags.iter().any(|t| t == "quality") {
        quality_issues(store, at).await?
    } else {
        HashMap::new()
    };
    let mut ds = Dataset {
        dim,
        ..Default::default()
    };
    let keep_tag = |s: &String| {
        s.starts_with("source=")
            || s.starts_with("era=")
            || s.split_once('=')
                .is_some_and(|(k, _)| cfg.slice_tags.iter().any(|t| t == k))
    };
    for (i, id) in ids.into_iter().enumerate() {
        let Some(&y) = labels.get(id.as_str()) else {
            ds.pool_x.extend_from_slice(&x[i * dim..(i + 1) * dim]);
            ds.pool_ids.push(id);
            continue;
        };
        let (source, slices) = facts.get(id.as_str()).map_or_else(
            || ("unknown".to_string(), vec!["source=unknown".to_string()]),
            |f| (f.split.source.clone(), f.slices.clone()),
        );
        match splits.get(id.as_str()) {
            Some(p) => {
                ds.split.push(p.split);
                ds.group.push(p.group.clone());
            }
            None => {
                ds.split.push(split_of(&id, &source, cfg));
                ds.group.push(id.to_string());
            }
        }
        let mut kept: Vec<String> = slices.into_iter().filter(|s| keep_tag(s)).collect();
        if !kept.iter().any(|s| s.starts_with("quality="))
            && let Some(issues) = quality.get(id.as_str())
        {
            if issues.is_empty() {
                kept.push("quality=ok".into());
            }
            kept.extend(issues.iter().map(|i| format!("quality={i}")));
        }
        if let Some(c) = clusters.get(id.as_str()) {
            kept.push(format!("cluster={c}"));
        }
        ds.slices.push(kept);
        ds.x.extend_from_slice(&x[i * dim..(i + 1) * dim]);
        ds.y.push(y);
        ds.ids.push(id);
    }
    ds.aug = read_augmented(store, at, embedding_model, &ds).await?;
    Ok(ds)
}

/// `image_quality` issues per scored sample (at the snapshot; empty list: no issue); none when
/// the table or the tag is absent.
async fn quality_issues(
    store: &Store,
    at: Option<&SnapshotName>,
) -> Result<HashMap<String, Vec<String>>, TrainError> {
    if !store
        .table_names()
        .await?
        .iter()
        .any(|t| t == tables::IMAGE_QUALITY)
    {
        return Ok(HashMap::new());
    }
    let batches = match read(
        store,
        at,
        tables::IMAGE_QUALITY,
        &[col::SAMPLE_ID, col::ISSUES],
    )
    .await
    {
        Ok(b) => b,
        Err(TrainError::Store(StoreError::SnapshotNotFound { .. })) => return Ok(HashMap::new()),
        Err(e) => return Err(e),
    };
    let mut out = HashMap::new();
    for b in &batches {
        let (Some(id), Some(issues)) = (
            b.column_by_name(col::SAMPLE_ID)
                .and_then(|c| c.as_string_opt::<i32>()),
            b.column_by_name(col::ISSUES)
                .and_then(|c| c.as_list_opt::<i32>()),
        ) else {
            return Err(TrainError::BadTable {
                table: tables::IMAGE_QUALITY.into(),
                why: "sample_id or issues missing or mistyped".into(),
            });
        };
        for i in 0..b.num_rows() {
            let list: Vec<String> = issues
                .value(i)
                .as_string_opt::<i32>()
                .map(|t| t.iter().flatten().map(str::to_string).collect())
                .unwrap_or_default();
            out.insert(id.value(i).to_string(), list);
        }
    }
    Ok(out)
}

/// The distorted copies of `ds`'s rows stored for `embedding_model` (at the snapshot); none when
/// the table does not exist or the snapshot predates it.
async fn read_augmented(
    store: &Store,
    at: Option<&SnapshotName>,
    embedding_model: &str,
    ds: &Dataset,
) -> Result<Augmented, TrainError> {
    let table = augmented_table(embedding_model);
    if !store.table_names().await?.contains(&table) {
        return Ok(Augmented::default());
    }
    let cols = [
        col::SAMPLE_ID,
        "seed",
        "copy",
        "level",
        "letterbox",
        "distortions",
        VECTOR,
    ];
    let batches = match read(store, at, &table, &cols).await {
        Ok(b) => b,
        Err(TrainError::Store(StoreError::SnapshotNotFound { .. })) => {
            return Ok(Augmented::default());
        }
        Err(e) => return Err(e),
    };
    let (mut copies, skipped) = collect_augmented(&table, &batches)?;
    if skipped > 0 {
        tracing::warn!(
            table,
            skipped,
            "augmented copies with a bad id or value left out"
        );
    }
    let row_of: HashMap<&str, usize> = ds
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    copies.retain(|c| row_of.contains_key(c.sample_id.as_str()));
    copies.sort_by(|a, b| {
        (a.sample_id.as_str(), a.seed, a.copy).cmp(&(b.sample_id.as_str(), b.seed, b.copy))
    });
    let mut out = Augmented::default();
    for c in copies {
        if c.vector.len() != ds.dim {
            return Err(TrainError::BadTable {
                table,
                why: format!(
                    "a copy of {} has {} values, the clean vectors {}",
                    c.sample_id,
                    c.vector.len(),
                    ds.dim
                ),
            });
        }
        out.of.push(row_of[c.sample_id.as_str()]);
        out.x.extend_from_slice(&c.vector);
        out.level.push(c.level);
        out.distortions.push(c.distortions);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u32) -> SampleId {
        SampleId::of_bytes(&i.to_le_bytes())
    }

    fn real(tags: &[String]) -> SplitFacts {
        SplitFacts {
            source: "dataset".into(),
            tags: tags.to_vec(),
        }
    }

    #[test]
    fn ungrouped_splits_are_stable_roughly_proportional_and_synthetic_mostly_trains() {
        let cfg = SplitConfig::default();
        let mut counts = HashMap::new();
        let mut synthetic_held = 0;
        for i in 0..4000u32 {
            let s = split_of(&id(i), "dataset", &cfg);
            assert_eq!(s, split_of(&id(i), "dataset", &cfg));
            let syn = split_of(&id(i), "synthetic", &cfg);
            assert!(matches!(syn, Split::Train | Split::EvalSynthetic));
            synthetic_held += usize::from(syn == Split::EvalSynthetic);
            *counts.entry(s).or_insert(0usize) += 1;
        }
        let share = |s| counts[&s] as f64 / 4000.0;
        assert!((share(Split::Eval) - 0.15).abs() < 0.03);
        assert!((share(Split::Calib) - 0.10).abs() < 0.03);
        assert!((synthetic_held as f64 / 4000.0 - 0.15).abs() < 0.03);
        let folds: Vec<usize> = (0..1000u32).map(|i| fold_of(&id(i), 5)).collect();
        for f in 0..5 {
            let n = folds.iter().filter(|&&x| x == f).count();
            assert!((150..250).contains(&n), "fold {f}: {n}");
        }
        // A sample alone in its group draws what `split_of` draws.
        let facts: BTreeMap<String, SplitFacts> = (0..500u32)
            .map(|i| (id(i).to_string(), real(&[])))
            .collect();
        let splits = Splits::assign(&facts, &[], &cfg);
        for i in 0..500u32 {
            assert_eq!(
                splits.get(id(i).as_str()).map(|p| p.split),
                Some(split_of(&id(i), "dataset", &cfg))
            );
        }
    }

    #[test]
    fn frames_of_one_sequence_and_near_twins_share_one_split() {
        let cfg = SplitConfig::default();
        let mut facts = BTreeMap::new();
        // 200 drives of 8 frames each; frame 0 of every drive has a near-twin outside any drive,
        // linked by the mining run.
        let mut links = Vec::new();
        for d in 0..200u32 {
            for f in 0..8u32 {
                facts.insert(
                    id(d * 100 + f).to_string(),
                    real(&[format!("seq_id=drive-{d}"), format!("frame_id={f}")]),
                );
            }
            let twin = id(1_000_000 + d).to_string();
            facts.insert(twin.clone(), real(&[]));
            links.push((twin, id(d * 100).to_string()));
        }
        let splits = Splits::assign(&facts, &links, &cfg);
        assert_eq!(splits.capped_links, 0);
        let mut held = 0;
        for d in 0..200u32 {
            let first = splits.get(id(d * 100).as_str()).cloned();
            let Some(first) = first else {
                panic!("drive {d} not placed")
            };
            for f in 1..8u32 {
                assert_eq!(
                    splits.get(id(d * 100 + f).as_str()),
                    Some(&first),
                    "drive {d}"
                );
            }
            let twin = splits.get(id(1_000_000 + d).as_str());
            assert_eq!(twin, Some(&first), "twin of drive {d}");
            held += usize::from(first.split != Split::Train);
        }
        // 25 % of 200 groups held out, give or take three standard deviations.
        assert!((30..=70).contains(&held), "{held} of 200 drives held out");
        // Folds follow groups too: a drive joined with its twin is one named group.
        let g = splits.get(id(700).as_str()).map(|p| p.group.clone());
        assert!(
            g.as_deref().is_some_and(|g| g.starts_with("group:")),
            "{g:?}"
        );
        // A drive without a twin is named by its tag.
        let mut lone = facts.clone();
        lone.retain(|k, _| k != &id(1_000_007).to_string());
        let splits = Splits::assign(&lone, &links, &cfg);
        let g = splits.get(id(700).as_str()).map(|p| p.group.clone());
        assert_eq!(g.as_deref(), Some("seq_id=drive-7"));
    }

    #[test]
    fn a_duplicate_group_takes_one_unbiased_draw_and_chains_are_capped() {
        let cfg = SplitConfig::default();
        let mut facts = BTreeMap::new();
        let mut links = Vec::new();
        // 400 groups of 6 duplicates linked in a chain.
        for g in 0..400u32 {
            for k in 0..6u32 {
                facts.insert(id(g * 10 + k).to_string(), real(&[]));
                if k > 0 {
                    links.push((id(g * 10 + k - 1).to_string(), id(g * 10 + k).to_string()));
                }
            }
        }
        let splits = Splits::assign(&facts, &links, &cfg);
        let mut eval = 0;
        for g in 0..400u32 {
            let first = splits.get(id(g * 10).as_str()).map(|p| p.split);
            for k in 1..6u32 {
                assert_eq!(splits.get(id(g * 10 + k).as_str()).map(|p| p.split), first);
            }
            eval += usize::from(first == Some(Split::Eval));
        }
        // 15 % of 400 = 60, sd ≈ 7: the smallest id of six (biased low) would give ≈ 200.
        assert!((35..=85).contains(&eval), "{eval} of 400 groups in eval");
        // A chain of 40 near-duplicates is cut into groups of at most 16.
        let facts: BTreeMap<String, SplitFacts> =
            (0..40u32).map(|i| (id(i).to_string(), real(&[]))).collect();
        let chain: Vec<(String, String)> = (1..40u32)
            .map(|i| (id(i - 1).to_string(), id(i).to_string()))
            .collect();
        let capped = Splits::assign(&facts, &chain, &cfg);
        assert!(capped.capped_links >= 2, "{}", capped.capped_links);
        let mut sizes: HashMap<String, usize> = HashMap::new();
        for (_, p) in capped.iter() {
            *sizes.entry(p.group.clone()).or_default() += 1;
        }
        assert!(sizes.values().all(|&n| n <= 16), "{sizes:?}");
    }

    #[test]
    fn synthetic_images_follow_their_frame_or_their_request() {
        let cfg = SplitConfig {
            synthetic_eval_share: 0.5,
            ..Default::default()
        };
        let mut facts = BTreeMap::new();
        for i in 0..300u32 {
            facts.insert(id(i).to_string(), real(&[]));
            // An edit of frame i.
            facts.insert(
                id(10_000 + i).to_string(),
                SplitFacts {
                    source: "synthetic".into(),
                    tags: vec![format!("synth_source={}", id(i))],
                },
            );
        }
        // 100 text-to-image requests of 4 images each.
        for r in 0..100u32 {
            for k in 0..4u32 {
                facts.insert(
                    id(20_000 + r * 10 + k).to_string(),
                    SplitFacts {
                        source: "synthetic".into(),
                        tags: vec![format!("synth_request=req-{r}")],
                    },
                );
            }
        }
        let splits = Splits::assign(&facts, &[], &cfg);
        let at = |i: u32| splits.get(id(i).as_str()).map(|p| p.split);
        for i in 0..300u32 {
            let frame = at(i);
            assert!(matches!(
                frame,
                Some(Split::Train | Split::Calib | Split::Eval)
            ));
            let want = if frame == Some(Split::Train) {
                Split::Train
            } else {
                Split::EvalSynthetic
            };
            assert_eq!(at(10_000 + i), Some(want), "edit of frame {i}");
        }
        let mut held = 0;
        for r in 0..100u32 {
            let first = at(20_000 + r * 10);
            for k in 1..4u32 {
                assert_eq!(at(20_000 + r * 10 + k), first);
            }
            assert!(matches!(first, Some(Split::Train | Split::EvalSynthetic)));
            held += usize::from(first == Some(Split::EvalSynthetic));
        }
        assert!((30..=70).contains(&held), "{held} of 100 requests held out");
    }
}
