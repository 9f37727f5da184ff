//! The synthesis stage's `load` phase: the mining run and its clusters, the samples' facts
//! (no image bytes), effective labels, the embeddings of the mining run's model, and the jobs
//! earlier runs recorded. Async store reads only.

use std::collections::{HashMap, HashSet};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ListArray, StringArray};
use serde_json::Value;

use super::SynthError;
use super::plan::{ClusterFacts, Member, PlanInputs};
use crate::store::RunId;
use crate::store::schema::{col, tables};
use crate::store::{
    RunKind, RunStatus, SampleId, Store, VECTOR, VectorRows, collect_vectors, embeddings_table,
};
use crate::train::{Split, SplitConfig};

/// What one stored sample is, without its bytes.
#[derive(Debug, Clone)]
pub struct SampleFacts {
    pub source: String,
    pub source_ref: String,
    pub era: String,
    pub tags: Vec<String>,
    pub width: u32,
    pub height: u32,
    pub phash: u64,
}

/// Everything the stage reads.
pub struct Loaded {
    pub plan: PlanInputs,
    /// The mining run's near-duplicate threshold (cosine distance), when it found one.
    pub near_threshold: Option<f64>,
    /// Unit-length embeddings of every embedded sample, row per id.
    pub vectors: VectorRows,
    /// Facts of every stored sample.
    pub samples: HashMap<String, SampleFacts>,
    /// Real samples of the eval and calibration splits: no synthetic image may be their twin.
    pub held_out: HashSet<String>,
    /// Versions of the tables read.
    pub versions: std::collections::BTreeMap<String, u64>,
}

fn shape(what: &str) -> SynthError {
    SynthError::Shape(format!("{what} columns missing or mistyped"))
}

/// The mining run to fill: the one named, or the latest successful one.
async fn mining_run(store: &Store, named: Option<&str>) -> Result<(String, Value), SynthError> {
    let runs = store.runs().await?;
    let run = match named {
        Some(id) => runs
            .iter()
            .find(|r| r.run_id.as_str() == id)
            .ok_or_else(|| SynthError::NoMiningRun(format!("no run {id} in the ledger")))?,
        None => runs
            .iter()
            .rev()
            .find(|r| r.kind == RunKind::Mine && r.status == RunStatus::Ok)
            .ok_or_else(|| {
                SynthError::NoMiningRun(
                    "no successful mining run; run `roadwork mine run` first".into(),
                )
            })?,
    };
    if run.kind != RunKind::Mine || run.status != RunStatus::Ok {
        return Err(SynthError::NoMiningRun(format!(
            "run {} is a {} run with status {}, not a successful mining run",
            run.run_id,
            run.kind,
            run.status.as_str()
        )));
    }
    let summary: Value = serde_json::from_str(&run.summary).unwrap_or(Value::Null);
    Ok((run.run_id.to_string(), summary))
}

fn list_strings(l: &ListArray, i: usize) -> Vec<String> {
    if l.is_null(i) {
        return Vec::new();
    }
    let v = l.value(i);
    v.as_string_opt::<i32>()
        .map(|s| {
            (0..s.len())
                .filter(|&j| !s.is_null(j))
                .map(|j| s.value(j).to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Every sample's facts (no image bytes are read).
pub async fn sample_facts(store: &Store) -> Result<HashMap<String, SampleFacts>, SynthError> {
    let cols = [
        col::SAMPLE_ID,
        col::SOURCE,
        col::SOURCE_REF,
        col::ERA,
        col::TAGS,
        col::WIDTH,
        col::HEIGHT,
        col::PHASH,
    ];
    let mut out = HashMap::new();
    for b in store.scan(tables::SAMPLES, Some(&cols), None, None).await? {
        let s = |name| {
            b.column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        };
        let u = |name| {
            b.column_by_name(name)
                .and_then(|c| c.as_primitive_opt::<UInt32Type>())
        };
        let (Some(id), Some(src), Some(sref), Some(era)) = (
            s(col::SAMPLE_ID),
            s(col::SOURCE),
            s(col::SOURCE_REF),
            s(col::ERA),
        ) else {
            return Err(shape("samples"));
        };
        let (Some(w), Some(h)) = (u(col::WIDTH), u(col::HEIGHT)) else {
            return Err(shape("samples"));
        };
        let Some(ph) = b
            .column_by_name(col::PHASH)
            .and_then(|c| c.as_primitive_opt::<UInt64Type>())
        else {
            return Err(shape("samples"));
        };
        let Some(tags) = b
            .column_by_name(col::TAGS)
            .and_then(|c| c.as_list_opt::<i32>())
        else {
            return Err(shape("samples"));
        };
        for i in 0..b.num_rows() {
            out.insert(
                id.value(i).to_string(),
                SampleFacts {
                    source: src.value(i).to_string(),
                    source_ref: sref.value(i).to_string(),
                    era: era.value(i).to_string(),
                    tags: list_strings(tags, i),
                    width: w.value(i),
                    height: h.value(i),
                    phash: ph.value(i),
                },
            );
        }
    }
    Ok(out)
}

/// Row of each sample id in `v`.
pub fn row_index(v: &VectorRows) -> HashMap<&str, usize> {
    v.ids
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect()
}

/// Unit-length copies of the rows (cosine distance is then `1 − dot`).
pub fn normalise(v: &mut VectorRows) {
    if v.dim == 0 {
        return;
    }
    for row in v.data.chunks_mut(v.dim) {
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n > 0.0 {
            row.iter_mut().for_each(|x| *x /= n);
        }
    }
}

/// Reads everything synthesis needs.
pub async fn load(
    store: &Store,
    mine_run: Option<&str>,
    split: &SplitConfig,
) -> Result<Loaded, SynthError> {
    let versions = store.versions().await?;
    let (run_id, summary) = mining_run(store, mine_run).await?;
    let embedding_model = summary
        .get("embedding_model")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            SynthError::NoMiningRun(format!("mining run {run_id} names no embedding model"))
        })?
        .to_string();
    let near_threshold = summary.get("near_threshold").and_then(Value::as_f64);
    let clusters = store
        .mine_clusters(&run_id)
        .await?
        .into_iter()
        .map(|c| ClusterFacts {
            cluster: c.cluster,
            size: c.size,
            under_covered: c.under_covered,
            error_rate: c.error_rate,
            n_labelled: c.n_labelled,
            train_share: c.train_share,
            traffic_share: c.traffic_share,
            drift_ratio: c.drift_ratio,
        })
        .collect();
    let filter = format!("{} = '{}'", col::RUN_ID, run_id.replace('\'', "''"));
    let mut scored: Vec<(String, u32, Option<f32>)> = Vec::new();
    for b in store
        .scan(
            tables::MINE_SCORES,
            Some(&[col::SAMPLE_ID, col::CLUSTER, col::PROB]),
            Some(&filter),
            None,
        )
        .await?
    {
        let (Some(id), Some(c), Some(p)) = (
            b.column_by_name(col::SAMPLE_ID)
                .and_then(|c| c.as_string_opt::<i32>()),
            b.column_by_name(col::CLUSTER)
                .and_then(|c| c.as_primitive_opt::<UInt32Type>()),
            b.column_by_name(col::PROB)
                .and_then(|c| c.as_primitive_opt::<Float32Type>()),
        ) else {
            return Err(shape("mine_scores"));
        };
        for i in 0..b.num_rows() {
            scored.push((
                id.value(i).to_string(),
                c.value(i),
                (!p.is_null(i) && p.value(i).is_finite()).then(|| p.value(i)),
            ));
        }
    }
    let samples = sample_facts(store).await?;
    let labels: HashMap<String, crate::store::Label> = store
        .effective_labels()
        .await?
        .into_iter()
        .map(|l| (l.sample_id.to_string(), l.label))
        .collect();
    let table = embeddings_table(&embedding_model);
    let batches = store
        .scan(&table, Some(&[col::SAMPLE_ID, VECTOR]), None, None)
        .await?;
    let mut vectors = collect_vectors(&table, &batches)?;
    normalise(&mut vectors);
    let row = row_index(&vectors);
    // Centroids of the clusters, for typical-first sources.
    let dim = vectors.dim;
    let mut sums: HashMap<u32, Vec<f32>> = HashMap::new();
    for (id, c, _) in &scored {
        if let Some(&r) = row.get(id.as_str()) {
            let s = sums.entry(*c).or_insert_with(|| vec![0.0; dim]);
            for (a, b) in s.iter_mut().zip(&vectors.data[r * dim..(r + 1) * dim]) {
                *a += b;
            }
        }
    }
    for s in sums.values_mut() {
        let n = s.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n > 0.0 {
            s.iter_mut().for_each(|x| *x /= n);
        }
    }
    // The same groups training splits by (frames of one drive, requests, the mining run's
    // duplicate groups): a frame synthesis may edit is one that trains.
    let split_facts: std::collections::BTreeMap<String, crate::train::SplitFacts> = samples
        .iter()
        .map(|(id, f)| {
            (
                id.clone(),
                crate::train::SplitFacts {
                    source: f.source.clone(),
                    tags: f.tags.clone(),
                },
            )
        })
        .collect();
    let links = crate::train::read_links(store, None, RunId::parse(&run_id).ok().as_ref())
        .await
        .map_err(|e| SynthError::Shape(format!("splits: {e}")))?;
    let splits = crate::train::Splits::assign(&split_facts, &links, split);
    let mut members = Vec::new();
    for (id, cluster, prob) in scored {
        let Some(f) = samples.get(&id) else { continue };
        let Ok(sid) = id.parse::<SampleId>() else {
            continue;
        };
        let centroid_distance = match (row.get(id.as_str()), sums.get(&cluster)) {
            (Some(&r), Some(c)) => {
                1.0 - vectors.data[r * dim..(r + 1) * dim]
                    .iter()
                    .zip(c)
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
            }
            _ => f32::MAX,
        };
        members.push(Member {
            split: splits.split(&sid, &f.source, split),
            sample_id: id.clone(),
            cluster,
            source: f.source.clone(),
            source_ref: f.source_ref.clone(),
            era: f.era.clone(),
            tags: f.tags.clone(),
            width: f.width,
            height: f.height,
            label: labels.get(&id).copied(),
            prob,
            centroid_distance,
        });
    }
    members.sort_by(|a, b| a.sample_id.cmp(&b.sample_id));
    let held_out = samples
        .iter()
        .filter(|(id, f)| {
            id.parse::<SampleId>()
                .is_ok_and(|sid| splits.split(&sid, &f.source, split) != Split::Train)
        })
        .map(|(id, _)| id.clone())
        .collect();
    let done = store
        .synth_images(None)
        .await?
        .into_iter()
        .map(|r| (r.synth_id, r.status))
        .collect();
    Ok(Loaded {
        plan: PlanInputs {
            mine_run: run_id,
            embedding_model,
            clusters,
            members,
            done,
        },
        near_threshold,
        vectors,
        samples,
        held_out,
        versions,
    })
}
