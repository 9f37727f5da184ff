//! The run report of a nightly job: `<data>/runs/<run_id>/index.html`, one self-contained file
//! (inline SVG charts, thumbnails as `data:` URIs, no network) that a person opens in a browser
//! the morning after: what came in, what the model got wrong, what was labelled, what the gate
//! decided and why, and how long each stage took.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use arrow_array::{Array, Float32Array, StringArray, TimestampMicrosecondArray};
use serde_json::Value;

use super::PipelineError;
use super::nightly::{NightlyProgress, StageStatus};
use crate::config::{Config, Stage};
use crate::imaging::{DecodeLimits, decode};
use crate::plot::{Chart, esc, series_color};
use crate::store::{MineClusterRow, RunKind, Store, collect_vectors, embeddings_table, tables};
use crate::train::{Registry, ShadowStats};

/// Points drawn in the cluster map at most.
const MAP_POINTS: usize = 800;
/// Thumbnails per gallery.
const GALLERY: usize = 12;

fn task(e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Task(e.to_string())
}

fn strings<'a>(b: &'a arrow_array::RecordBatch, name: &str) -> Option<&'a StringArray> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
}

fn floats<'a>(b: &'a arrow_array::RecordBatch, name: &str) -> Option<&'a Float32Array> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<Float32Array>())
}

/// Everything the report shows, read from the store before any drawing.
struct Facts {
    /// sample id → (source, received day as days since the epoch).
    samples: HashMap<String, (String, i64)>,
    labels: HashMap<String, u8>,
    /// The champion's calibrated probability per sample.
    probs: HashMap<String, f32>,
    /// Up to MAP_POINTS embedding rows.
    map_ids: Vec<String>,
    map_x: Vec<f32>,
    map_dim: usize,
    hard: Vec<(String, f32, String, Option<f32>)>,
    clusters: Vec<MineClusterRow>,
    /// (sample, label, source, author) labelled since the previous job started.
    new_labels: Vec<(String, u8, String, String)>,
    /// sample id → image bytes, for the galleries.
    images: HashMap<String, Vec<u8>>,
    /// Label yield per arm of the last selections, oldest first.
    arms: Vec<ArmYield>,
}

/// What the labels bought for one arm of one selection turned out to be: the strategy's picks
/// against the random control arm drawn from the same candidates (`mine.select.control_share`).
#[derive(Debug, Clone, PartialEq)]
struct ArmYield {
    selection: String,
    /// The strategy that ran, or `control (random)`.
    arm: String,
    selected: usize,
    /// Picks with an effective label now.
    labelled: usize,
    /// Labelled picks that are roadwork (the minority class validators draw half the time).
    roadwork: usize,
    /// Labelled picks the head that chose them had on the wrong side of ½ (its probability at
    /// mining time): the labels that correct the head.
    corrected: usize,
    /// Labelled picks the head had a probability for.
    scored: usize,
}

/// The arms of one selection, with their yield under the effective labels `labels` and the
/// choosing head's probabilities `probs`.
fn arm_yield(
    selection: &str,
    rows: &[crate::store::SelectionRow],
    labels: &HashMap<String, u8>,
    probs: &HashMap<String, f32>,
) -> Vec<ArmYield> {
    let mut by: BTreeMap<String, ArmYield> = BTreeMap::new();
    for r in rows {
        let arm = if r.reasons.contains(crate::mine::CONTROL_ARM) {
            "control (random)".to_string()
        } else {
            r.strategy.clone()
        };
        let a = by.entry(arm.clone()).or_insert_with(|| ArmYield {
            selection: selection.to_string(),
            arm,
            selected: 0,
            labelled: 0,
            roadwork: 0,
            corrected: 0,
            scored: 0,
        });
        a.selected += 1;
        if let Some(&l) = labels.get(&r.sample_id) {
            a.labelled += 1;
            a.roadwork += usize::from(l == 1);
            if let Some(&p) = probs.get(&r.sample_id) {
                a.scored += 1;
                a.corrected += usize::from((p >= 0.5) != (l == 1));
            }
        }
    }
    by.into_values().collect()
}

async fn read_facts(
    cfg: &Config,
    store: &Store,
    run_id: &str,
    p: &NightlyProgress,
) -> Result<Facts, PipelineError> {
    let mut samples = HashMap::new();
    for b in store
        .scan(
            tables::SAMPLES,
            Some(&["sample_id", "source", "received_at"]),
            None,
            None,
        )
        .await?
    {
        let (Some(id), Some(src), Some(at)) = (
            strings(&b, "sample_id"),
            strings(&b, "source"),
            b.column_by_name("received_at")
                .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>()),
        ) else {
            continue;
        };
        for i in 0..id.len() {
            let day = at.value(i).div_euclid(86_400_000_000);
            samples.insert(id.value(i).to_string(), (src.value(i).to_string(), day));
        }
    }
    let labels: HashMap<String, u8> = store
        .effective_labels()
        .await?
        .into_iter()
        .map(|l| (l.sample_id.to_string(), l.label.as_u8()))
        .collect();
    let mut probs = HashMap::new();
    if let Some(ch) = &p.champion_after {
        let filter = format!("model_version = '{}'", ch.replace('\'', "''"));
        probs = store
            .id_values(tables::HEAD_SCORES, "sample_id", "prob", Some(&filter))
            .await?
            .into_iter()
            .filter_map(|(id, p)| Some((id, p?)))
            .collect();
    }
    let (mut map_ids, mut map_x, mut map_dim) = (Vec::new(), Vec::new(), 0);
    if let Ok(model) =
        crate::mine::resolve_embedding_model(store, cfg.mine.embedding_model.as_deref()).await
    {
        let table = embeddings_table(&model);
        let batches = store
            .scan(&table, Some(&["sample_id", "vector"]), None, None)
            .await?;
        let v = collect_vectors(&table, &batches)?;
        let mut order: Vec<usize> = (0..v.ids.len()).collect();
        // A deterministic spread over the store: rows sorted by id, every k-th kept.
        order.sort_by(|&a, &b| v.ids[a].cmp(&v.ids[b]));
        let step = order.len().div_ceil(MAP_POINTS).max(1);
        for &i in order.iter().step_by(step) {
            map_ids.push(v.ids[i].clone());
            map_x.extend_from_slice(&v.data[i * v.dim..(i + 1) * v.dim]);
        }
        map_dim = v.dim;
    }
    let mine_run = p
        .output(Stage::Mine, "run_id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or(store
            .runs()
            .await?
            .into_iter()
            .rev()
            .find(|r| r.kind == RunKind::Mine && r.status == crate::store::RunStatus::Ok)
            .map(|r| r.run_id.to_string()));
    let mut hard = Vec::new();
    let mut clusters = Vec::new();
    if let Some(run) = &mine_run {
        let filter = format!("run_id = '{}'", run.replace('\'', "''"));
        for b in store
            .scan(
                tables::MINE_SCORES,
                Some(&["sample_id", "hardness", "reasons", "prob"]),
                Some(&filter),
                None,
            )
            .await?
        {
            if let (Some(id), Some(h), Some(r), Some(pr)) = (
                strings(&b, "sample_id"),
                floats(&b, "hardness"),
                strings(&b, "reasons"),
                floats(&b, "prob"),
            ) {
                for i in 0..id.len() {
                    let prob = (!pr.is_null(i)).then(|| pr.value(i));
                    hard.push((
                        id.value(i).to_string(),
                        h.value(i),
                        r.value(i).to_string(),
                        prob,
                    ));
                }
            }
        }
        hard.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        hard.truncate(GALLERY);
        clusters = store.mine_clusters(run).await?;
    }
    // Labels by people or the teacher since the previous job began.
    let runs = store.runs().await?;
    let since = runs
        .iter()
        .filter(|r| r.kind == RunKind::Nightly && r.run_id.as_str() != run_id)
        .map(|r| r.started_at)
        .max();
    let mut new_labels: Vec<(String, u8, String, String)> = store
        .labels()
        .await?
        .into_iter()
        .filter(|l| {
            matches!(
                l.source,
                crate::store::LabelSource::Human | crate::store::LabelSource::Teacher
            ) && since.is_none_or(|s| l.ts >= s)
        })
        .map(|l| {
            (
                l.sample_id.to_string(),
                l.label.as_u8(),
                l.source.as_str().to_string(),
                l.author,
            )
        })
        .collect();
    new_labels.sort();
    // The last three jobs' selections, each judged by the probabilities of the head that chose
    // it (the `head` its select stage names; its pool scores are in `head_scores`).
    let select_head = |p: &NightlyProgress| {
        p.stages
            .iter()
            .find(|r| r.stage == Stage::Select)
            .and_then(|r| r.inputs.get("head"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let mut jobs: Vec<(chrono::DateTime<chrono::Utc>, String, Option<String>)> = runs
        .iter()
        .filter(|r| r.kind == RunKind::Nightly && r.run_id.as_str() != run_id)
        .map(|r| {
            let past = serde_json::from_str::<NightlyProgress>(&r.summary).ok();
            (
                r.started_at,
                r.run_id.to_string(),
                past.as_ref().and_then(select_head),
            )
        })
        .collect();
    jobs.sort();
    jobs.push((chrono::Utc::now(), run_id.to_string(), select_head(p)));
    let mut arms = Vec::new();
    for (_, name, head) in jobs.iter().rev().take(3).rev() {
        let rows = store.selection(name).await?;
        if rows.is_empty() {
            continue;
        }
        let mut chooser = HashMap::new();
        if let Some(v) = head {
            let filter = format!("model_version = '{}'", v.replace('\'', "''"));
            chooser = store
                .id_values(tables::HEAD_SCORES, "sample_id", "prob", Some(&filter))
                .await?
                .into_iter()
                .filter_map(|(id, p)| Some((id, p?)))
                .collect();
        }
        arms.extend(arm_yield(name, &rows, &labels, &chooser));
    }
    let want: HashSet<String> = hard
        .iter()
        .map(|h| h.0.clone())
        .chain(new_labels.iter().take(GALLERY).map(|l| l.0.clone()))
        .collect();
    let mut images = HashMap::new();
    if !want.is_empty() {
        let list: Vec<String> = want.iter().map(|i| format!("'{i}'")).collect();
        for s in store
            .samples(Some(&format!("sample_id IN ({})", list.join(","))))
            .await?
        {
            images.insert(s.sample_id.to_string(), s.image);
        }
    }
    Ok(Facts {
        samples,
        labels,
        probs,
        map_ids,
        map_x,
        map_dim,
        hard,
        clusters,
        new_labels,
        images,
        arms,
    })
}

/// The two leading principal components of `x` (`n × dim`), by power iteration on XᵀX of the
/// centred rows (deterministic start).
fn pca2(x: &[f32], n: usize, dim: usize) -> Vec<(f64, f64)> {
    if n == 0 || dim == 0 {
        return vec![];
    }
    let mut mean = vec![0f64; dim];
    for r in 0..n {
        for (m, v) in mean.iter_mut().zip(&x[r * dim..(r + 1) * dim]) {
            *m += *v as f64 / n as f64;
        }
    }
    let row = |r: usize| {
        x[r * dim..(r + 1) * dim]
            .iter()
            .zip(&mean)
            .map(|(v, m)| *v as f64 - m)
    };
    let mut comps: Vec<Vec<f64>> = Vec::new();
    for c in 0..2 {
        let mut v: Vec<f64> = (0..dim)
            .map(|i| ((i * 7919 + c * 104_729) % 1000) as f64 / 1000.0 - 0.5)
            .collect();
        for _ in 0..40 {
            let mut next = vec![0f64; dim];
            for r in 0..n {
                let proj: f64 = row(r).zip(&v).map(|(a, b)| a * b).sum();
                for (nx, a) in next.iter_mut().zip(row(r)) {
                    *nx += proj * a;
                }
            }
            for prev in &comps {
                let d: f64 = next.iter().zip(prev).map(|(a, b)| a * b).sum();
                for (nx, p) in next.iter_mut().zip(prev) {
                    *nx -= d * p;
                }
            }
            let norm = next.iter().map(|a| a * a).sum::<f64>().sqrt();
            if norm < 1e-12 {
                break;
            }
            v = next.into_iter().map(|a| a / norm).collect();
        }
        comps.push(v);
    }
    (0..n)
        .map(|r| {
            let p = |c: &Vec<f64>| row(r).zip(c).map(|(a, b)| a * b).sum::<f64>();
            (p(&comps[0]), p(&comps[1]))
        })
        .collect()
}

/// A small JPEG of an image as a `data:` URI (None when it does not decode).
fn thumbnail(bytes: &[u8]) -> Option<String> {
    use base64::Engine as _;
    let limits = DecodeLimits::default();
    let d = decode(bytes, &limits).ok()?;
    let t = d.image.thumbnail(160, 120).to_rgb8();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .encode_image(&t)
        .ok()?;
    Some(format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&out)
    ))
}

fn scatter(
    title: &str,
    pts: &[(f64, f64)],
    groups: &[(String, Vec<usize>)],
) -> Result<String, PipelineError> {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    let mut c = Chart::new(420, 360, title, "PC 1", "PC 2", (x0, x1), (y0, y1)).map_err(task)?;
    for (i, (name, idx)) in groups.iter().enumerate() {
        let xs: Vec<f64> = idx.iter().map(|&k| pts[k].0).collect();
        let ys: Vec<f64> = idx.iter().map(|&k| pts[k].1).collect();
        c.points(
            &format!("{name} ({})", idx.len()),
            &xs,
            &ys,
            series_color(i),
            2.5,
        );
    }
    Ok(c.to_svg())
}

fn group_by(ids: &[String], key: impl Fn(&str) -> String) -> Vec<(String, Vec<usize>)> {
    let mut m: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        m.entry(key(id)).or_default().push(i);
    }
    m.into_iter().collect()
}

fn label_name(l: Option<&u8>) -> String {
    match l {
        Some(1) => "roadwork".into(),
        Some(_) => "clean".into(),
        None => "unlabelled".into(),
    }
}

/// Relative link from the report directory to a file under the data directory.
fn link(from_dir: &Path, data_dir: &Path, target: &Path) -> String {
    let depth = from_dir
        .strip_prefix(data_dir)
        .map(|p| p.components().count())
        .unwrap_or(0);
    match target.strip_prefix(data_dir) {
        Ok(rel) => format!("{}{}", "../".repeat(depth), rel.display()),
        Err(_) => format!("file://{}", target.display()),
    }
}

fn metric_row(h: &mut String, name: &str, a: Option<f64>, b: Option<f64>) {
    let count = name.contains("samples");
    let f = |v: Option<f64>| {
        v.map_or("–".into(), |v| {
            if count {
                format!("{v:.0}")
            } else {
                format!("{v:.4}")
            }
        })
    };
    let delta = match (a, b) {
        (Some(a), Some(b)) if count => format!("{:+.0}", a - b),
        (Some(a), Some(b)) => format!("{:+.4}", a - b),
        _ => "–".into(),
    };
    let _ = write!(
        h,
        "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{delta}</td></tr>",
        f(a),
        f(b)
    );
}

/// ROC and PR curves of the challenger and the previous champion, overlaid.
fn curve_charts(curves: &serde_json::Map<String, Value>) -> Result<String, PipelineError> {
    let series = |v: &Value, key: &str| -> (Vec<f64>, Vec<f64>) {
        let arr = |k: &str| {
            v.pointer(&format!("/{key}/{k}"))
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default()
        };
        (arr("x"), arr("y"))
    };
    let mut out = String::new();
    let sets: Vec<&str> = curves
        .values()
        .filter_map(|c| c.get("eval_set").and_then(Value::as_str))
        .collect();
    if sets.len() == 2 {
        out.push_str(if sets[0] == sets[1] {
            "<p>Both heads on the same eval set:</p>"
        } else {
            "<p>Each head on its own snapshot's eval set (they differ: labels came into the eval split since the champion was trained):</p>"
        });
    }
    for (key, title, xl, yl) in [
        ("roc", "ROC", "false positive rate", "true positive rate"),
        ("pr", "Precision-recall", "recall", "precision"),
    ] {
        let mut c = Chart::new(420, 360, title, xl, yl, (0.0, 1.0), (0.0, 1.0)).map_err(task)?;
        if key == "roc" {
            c.reference((0.0, 0.0), (1.0, 1.0));
        }
        for (i, who) in ["challenger", "champion"].iter().enumerate() {
            if let Some(v) = curves.get(*who) {
                let (xs, ys) = series(v, key);
                let auc = v
                    .get(if key == "roc" { "roc_auc" } else { "pr_auc" })
                    .and_then(Value::as_f64)
                    .map_or(String::new(), |a| format!(" (AUC {a:.3})"));
                c.line(&format!("{who}{auc}"), &xs, &ys, series_color(i));
            }
        }
        out.push_str(&c.to_svg());
    }
    Ok(out)
}

fn draw(
    cfg: &Config,
    run_id: &str,
    p: &NightlyProgress,
    f: &Facts,
    dir: &Path,
) -> Result<String, PipelineError> {
    let mut h = String::new();
    let failed = p.stages.iter().any(|s| s.status == StageStatus::Failed);
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>roadwork nightly {id}</title>\
<style>body{{font-family:sans-serif;margin:2em;max-width:1280px;color:#222}}table{{border-collapse:collapse;margin:8px 0}}\
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}th{{background:#f4f4f4}}\
.num{{text-align:right}}svg{{margin:6px;border:1px solid #eee}}.g{{display:flex;flex-wrap:wrap;gap:10px}}\
.g figure{{margin:0;width:170px;font-size:11px}}.g img{{width:160px;height:120px;object-fit:cover;border:1px solid #ccc}}\
.ok{{color:#1a7f37}}.bad{{color:#b42318}}.skip{{color:#777}}code{{font-size:12px}}</style></head><body>\
<h1>Nightly run <code>{id}</code></h1><p class=\"{cls}\">{status}</p>",
        id = esc(run_id),
        cls = if failed { "bad" } else { "ok" },
        status = if failed {
            "A stage failed; resume with <code>roadwork nightly --resume</code>."
        } else {
            "Every stage finished."
        }
    );
    let champ = |c: &Option<String>| c.as_deref().map_or("none".to_string(), esc);
    let _ = write!(
        h,
        "<p>Champion before: <code>{}</code> → after: <code>{}</code>.</p>",
        champ(&p.champion_before),
        champ(&p.champion_after)
    );
    if let Some(n) = p.output(Stage::Embed, "model_id").and_then(Value::as_str) {
        let kind = if n.starts_with("baseline-") {
            " — <b>baseline encoder</b> (colour + gradient histograms), not DINOv3"
        } else if p
            .output(Stage::Embed, "random_weights")
            .and_then(Value::as_bool)
            == Some(true)
        {
            " — <b>random DINOv3 weights</b>: features carry no signal"
        } else {
            ""
        };
        let _ = write!(h, "<p>Embeddings: <code>{}</code>{kind}.</p>", esc(n));
    }

    // Stages.
    h.push_str("<h2>Stages</h2><table><tr><th>stage</th><th>status</th><th class=num>seconds</th><th>note</th><th>runs</th></tr>");
    for s in &p.stages {
        let cls = match s.status {
            StageStatus::Done => "ok",
            StageStatus::Failed | StageStatus::Running => "bad",
            StageStatus::Skipped => "skip",
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td class={cls}>{:?}</td><td class=num>{:.1}</td><td>{}</td><td><code>{}</code></td></tr>",
            s.stage,
            s.status,
            s.secs,
            esc(s.note.as_deref().unwrap_or("")),
            esc(&s.runs.join(" "))
        );
    }
    h.push_str("</table>");
    if let Some(srcs) = p.output(Stage::Ingest, "sources").and_then(Value::as_array) {
        h.push_str("<table><tr><th>ingested</th><th class=num>scanned</th><th class=num>new samples</th><th class=num>labels written</th></tr>");
        for s in srcs {
            let n = |k: &str| s.get(k).map_or("–".into(), Value::to_string);
            let _ = write!(
                h,
                "<tr><td>{} <code>{}</code></td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td></tr>",
                esc(s.get("kind").and_then(Value::as_str).unwrap_or("")),
                esc(&s.get("input").map_or(String::new(), |v| v
                    .as_str()
                    .map_or(v.to_string(), str::to_string))),
                n("scanned"),
                n("new_samples"),
                n("labels_written")
            );
        }
        h.push_str("</table>");
    }

    // Data.
    h.push_str("<h2>Data</h2>");
    let mut table: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    let mut by_day: BTreeMap<String, BTreeMap<i64, usize>> = BTreeMap::new();
    for (id, (src, day)) in &f.samples {
        let col = match f.labels.get(id) {
            Some(1) => 0,
            Some(_) => 1,
            None => 2,
        };
        table.entry(src.clone()).or_default()[col] += 1;
        *by_day
            .entry(src.clone())
            .or_default()
            .entry(*day)
            .or_default() += 1;
    }
    h.push_str("<table><tr><th>source</th><th class=num>roadwork</th><th class=num>clean</th><th class=num>unlabelled</th><th class=num>total</th></tr>");
    for (src, c) in &table {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td></tr>",
            esc(src),
            c[0],
            c[1],
            c[2],
            c.iter().sum::<usize>()
        );
    }
    h.push_str("</table>");
    let days: Vec<i64> = by_day.values().flat_map(|m| m.keys().copied()).collect();
    if let (Some(&d0), Some(&d1)) = (days.iter().min(), days.iter().max()) {
        let total = f.samples.len() as f64;
        let mut c = Chart::new(
            560,
            300,
            "Samples in the store (cumulative)",
            "days since the first sample",
            "samples",
            (0.0, (d1 - d0).max(1) as f64),
            (0.0, total.max(1.0)),
        )
        .map_err(task)?;
        for (i, (src, m)) in by_day.iter().enumerate() {
            let mut xs = vec![0.0];
            let mut ys = vec![0.0];
            let mut acc = 0usize;
            for (d, n) in m {
                acc += n;
                xs.push((d - d0) as f64);
                ys.push(acc as f64);
            }
            xs.push((d1 - d0).max(1) as f64);
            ys.push(acc as f64);
            c.line(src, &xs, &ys, series_color(i));
        }
        h.push_str(&c.to_svg());
    }

    // Promotion.
    h.push_str("<h2>Promotion</h2>");
    let decision = p.output(Stage::Promote, "decision");
    let gate = p.output(Stage::Promote, "gate");
    if let Some(d) = decision {
        let promoted = d.get("promoted").and_then(Value::as_bool) == Some(true);
        gate_paragraph(
            &mut h,
            d,
            if promoted {
                "was promoted"
            } else {
                "was refused"
            },
            promoted,
        );
    }
    if let Some(g) = gate {
        let passed = g.get("promoted").and_then(Value::as_bool) == Some(true);
        let verb = if passed {
            "passed the gate and was named the challenger (scored in shadow before it may serve)"
        } else {
            "was refused"
        };
        gate_paragraph(&mut h, g, verb, passed);
    }
    if decision.is_none() && gate.is_none() {
        let note = p
            .stages
            .iter()
            .find(|s| s.stage == Stage::Promote)
            .and_then(|s| s.note.clone())
            .unwrap_or_else(|| "the promote stage did not run".into());
        let _ = write!(h, "<p class=skip>{}</p>", esc(&note));
    }
    let registry = Registry::open(cfg.train.registry_dir(&cfg.data.dir)).ok();
    // The head judged against the previous champion: the shadowed challenger when it was
    // promoted tonight, else tonight's head.
    let promoted = p
        .output(Stage::Promote, "promoted")
        .and_then(Value::as_bool)
        == Some(true);
    let challenger = p
        .output(Stage::Promote, "shadowed")
        .filter(|_| promoted)
        .or_else(|| p.output(Stage::Train, "version"))
        .and_then(Value::as_str);
    let card = |v: Option<&str>| {
        v.and_then(|v| registry.as_ref().and_then(|r| r.load(v).ok()))
            .map(|(c, _)| c)
    };
    let previous = p
        .output(Stage::Promote, "champion_before")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or(p.champion_before.clone());
    let (a, b) = (card(challenger), card(previous.as_deref()));
    if a.is_some() || b.is_some() {
        let _ = write!(
            h,
            "<p>Metrics on each head's own eval set (the gate above compares both on the challenger's).</p><table><tr><th>metric</th><th>challenger {}</th><th>previous champion {}</th><th>Δ</th></tr>",
            esc(challenger.unwrap_or("–")),
            esc(previous.as_deref().unwrap_or("–"))
        );
        let m = |c: &Option<crate::train::ModelCard>,
                 f: fn(&crate::train::Metrics) -> Option<f64>| {
            c.as_ref().and_then(|c| c.metrics.as_ref()).and_then(f)
        };
        metric_row(
            &mut h,
            "eval samples",
            m(&a, |m| Some(m.n as f64)),
            m(&b, |m| Some(m.n as f64)),
        );
        metric_row(
            &mut h,
            "accuracy",
            m(&a, |m| Some(m.accuracy)),
            m(&b, |m| Some(m.accuracy)),
        );
        metric_row(
            &mut h,
            "MCC",
            m(&a, |m| Some(m.mcc)),
            m(&b, |m| Some(m.mcc)),
        );
        metric_row(
            &mut h,
            "ROC-AUC",
            m(&a, |m| m.roc_auc),
            m(&b, |m| m.roc_auc),
        );
        metric_row(
            &mut h,
            "ECE",
            m(&a, |m| Some(m.ece)),
            m(&b, |m| Some(m.ece)),
        );
        let train_n = |c: &Option<crate::train::ModelCard>| {
            c.as_ref().map(|c| {
                c.data
                    .iter()
                    .filter(|(k, _)| k.starts_with("train/"))
                    .map(|(_, n)| *n as f64)
                    .sum::<f64>()
            })
        };
        metric_row(&mut h, "training samples", train_n(&a), train_n(&b));
        h.push_str("</table>");
    }
    if let Some(curves) = p.output(Stage::Eval, "curves").and_then(Value::as_object) {
        h.push_str(&curve_charts(curves)?);
    }
    if let Some(r) = p.output(Stage::Eval, "report").and_then(Value::as_str) {
        let _ = write!(
            h,
            "<p>Curves, slices and the reward replay: <a href=\"{}\">the challenger's evaluation report</a>.</p>",
            esc(&link(dir, &cfg.data.dir, Path::new(r)))
        );
    }
    shadow_section(&mut h, p, cfg.pipeline.min_shadow);

    // Cluster map.
    let n = f.map_ids.len();
    if n >= 3 && f.map_dim > 0 {
        h.push_str("<h2>Cluster map</h2><p>The embeddings projected on their two leading principal components (up to 800 samples).</p>");
        let pts = pca2(&f.map_x, n, f.map_dim);
        h.push_str(&scatter(
            "by label",
            &pts,
            &group_by(&f.map_ids, |id| label_name(f.labels.get(id))),
        )?);
        h.push_str(&scatter(
            "by source",
            &pts,
            &group_by(&f.map_ids, |id| {
                f.samples.get(id).map_or("?".into(), |(s, _)| s.clone())
            }),
        )?);
        if !f.probs.is_empty() {
            h.push_str(&scatter(
                "champion errors",
                &pts,
                &group_by(&f.map_ids, |id| match (f.labels.get(id), f.probs.get(id)) {
                    (Some(&l), Some(&p)) if (p >= 0.5) == (l == 1) => "right".into(),
                    (Some(_), Some(_)) => "wrong".into(),
                    _ => "unlabelled or unscored".into(),
                }),
            )?);
        }
    }

    // Drift.
    if !f.clusters.is_empty() {
        let mut cl: Vec<&MineClusterRow> = f.clusters.iter().collect();
        cl.sort_by(|a, b| b.drift_ratio.total_cmp(&a.drift_ratio));
        h.push_str("<h2>Drift</h2><p>Clusters by recent validator traffic share over training share (top 10).</p><table><tr><th>cluster</th><th class=num>size</th><th class=num>labelled</th><th class=num>train share</th><th class=num>traffic share</th><th class=num>ratio</th><th class=num>z</th><th class=num>error rate</th><th>under-covered</th></tr>");
        for c in cl.iter().take(10) {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{:.3}</td><td class=num>{:.3}</td><td class=num>{:.2}</td><td class=num>{:.2}</td><td class=num>{}</td><td>{}</td></tr>",
                c.cluster,
                c.size,
                c.n_labelled,
                c.train_share,
                c.traffic_share,
                c.drift_ratio,
                c.drift_z,
                c.error_rate.map_or("–".into(), |e| format!("{e:.2}")),
                if c.under_covered { "yes" } else { "" }
            );
        }
        h.push_str("</table>");
    }

    // Synthesis.
    if let Some(gaps) = p
        .output(Stage::Synth, "gaps")
        .and_then(|g| serde_json::from_value::<Vec<crate::synth::GapOutcome>>(g.clone()).ok())
    {
        let n = |k: &str| {
            p.output(Stage::Synth, k)
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        let usd = p
            .output(Stage::Synth, "spent_usd")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let _ = write!(
            h,
            "<h2>Synthesis</h2><p>{} images accepted of {} made ({} roadwork, {} clean), ${usd:.2} spent.",
            n("accepted"),
            n("sent"),
            n("accepted_roadwork"),
            n("accepted_clean")
        );
        if let Some(r) = p.output(Stage::Synth, "report").and_then(Value::as_str) {
            let _ = write!(
                h,
                " <a href=\"file://{}\">The synthesis report</a> has every image and why it was refused.",
                esc(r)
            );
        }
        h.push_str("</p><table><tr><th>gap</th><th>why</th><th class=num>asked</th><th class=num>accepted</th><th>coverage</th></tr>");
        for g in &gaps {
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td>{}</td><td class=num>{}</td><td class=num>{}</td><td>{}</td></tr>",
                esc(&g.gap),
                esc(&g.why),
                g.asked,
                g.accepted,
                esc(&g.coverage())
            );
        }
        h.push_str("</table>");
        if let Some(flagged) = p
            .output(Stage::Synth, "flagged_clusters")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
        {
            let _ = write!(
                h,
                "<p class=bad>Shortcut audit: synthetic images are separable from real ones in clusters {}.</p>",
                esc(&serde_json::to_string(flagged).unwrap_or_default())
            );
        }
    }

    // Galleries.
    let gallery = |h: &mut String, title: &str, items: Vec<(String, String)>| {
        let _ = write!(h, "<h2>{title}</h2>");
        if items.is_empty() {
            h.push_str("<p class=skip>none</p>");
            return;
        }
        h.push_str("<div class=g>");
        for (id, caption) in items {
            let img = f
                .images
                .get(&id)
                .and_then(|b| thumbnail(b))
                .unwrap_or_default();
            let _ = write!(
                h,
                "<figure><img src=\"{img}\" alt=\"{}\"><figcaption><code>{}</code><br>{}</figcaption></figure>",
                &id[..id.len().min(12)],
                &id[..id.len().min(12)],
                esc(&caption)
            );
        }
        h.push_str("</div>");
    };
    gallery(
        &mut h,
        "Hardest cases",
        f.hard
            .iter()
            .map(|(id, hd, reasons, prob)| {
                (
                    id.clone(),
                    format!(
                        "hardness {hd:.2}; label {}; p {}; {reasons}",
                        label_name(f.labels.get(id)),
                        prob.map_or("–".into(), |p| format!("{p:.2}"))
                    ),
                )
            })
            .collect(),
    );
    let total_new = f.new_labels.len();
    gallery(
        &mut h,
        &format!("Newly labelled ({total_new} since the previous run)"),
        f.new_labels
            .iter()
            .take(GALLERY)
            .map(|(id, l, src, author)| {
                (
                    id.clone(),
                    format!("{} by {src} {author}", label_name(Some(l))),
                )
            })
            .collect(),
    );
    if !f.arms.is_empty() {
        h.push_str(
            "<h2>Label yield per selection arm</h2><p>What the labels bought for each selection \
turned out to be. The control arm (<code>mine.select.control_share</code>) is a uniform random \
draw from the same candidates: a strategy earns its keep when its labels find more roadwork, or \
more samples the choosing head had on the wrong side of ½, than chance does.</p><table><tr>\
<th>selection</th><th>arm</th><th>selected</th><th>labelled</th><th>roadwork</th>\
<th>head was wrong</th></tr>",
        );
        let pct = |a: usize, b: usize| {
            if b == 0 {
                "–".to_string()
            } else {
                format!("{a} ({:.0} %)", 100.0 * a as f64 / b as f64)
            }
        };
        for a in &f.arms {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&a.selection),
                esc(&a.arm),
                a.selected,
                pct(a.labelled, a.selected),
                pct(a.roadwork, a.labelled),
                pct(a.corrected, a.scored),
            );
        }
        h.push_str("</table>");
    }
    if let Some(sheet) = p.output(Stage::Select, "sheet").and_then(Value::as_str) {
        let _ = write!(
            h,
            "<p>Tonight's selection ({} samples) waits for labels: fill <a href=\"{}\">the sheet</a> (or import the Label Studio tasks next to it) and run <code>roadwork labels import</code>.</p>",
            p.output(Stage::Select, "n")
                .map_or("?".into(), Value::to_string),
            esc(&link(dir, &cfg.data.dir, Path::new(sheet)))
        );
    }
    h.push_str("</body></html>\n");
    Ok(h)
}

/// Writes the report of job `run_id` and returns the path of its `index.html`.
pub async fn write_run_report(
    cfg: &Config,
    store: &Store,
    run_id: &str,
    p: &NightlyProgress,
) -> Result<PathBuf, PipelineError> {
    let facts = read_facts(cfg, store, run_id, p).await?;
    let dir = cfg.data.dir.join("runs").join(run_id);
    let (cfg2, id, p2, dir2) = (cfg.clone(), run_id.to_string(), p.clone(), dir.clone());
    let html = tokio::task::spawn_blocking(move || draw(&cfg2, &id, &p2, &facts, &dir2))
        .await
        .map_err(task)??;
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| task(format!("{}: {e}", dir.display())))?;
    let index = dir.join("index.html");
    tokio::fs::write(&index, html)
        .await
        .map_err(|e| task(format!("{}: {e}", index.display())))?;
    Ok(index)
}

/// One gate decision: who against whom, on how many samples, the scores, and why it was refused.
fn gate_paragraph(h: &mut String, d: &Value, verb: &str, ok: bool) {
    let score = |k: &str| {
        d.get(k)
            .and_then(Value::as_f64)
            .map_or("–".into(), |v| format!("{v:.4}"))
    };
    let _ = write!(
        h,
        "<p class=\"{}\">Challenger <code>{}</code> {verb} against champion <code>{}</code> on {} shared eval samples ({}: {} vs {}).</p>",
        if ok { "ok" } else { "bad" },
        esc(d.get("challenger").and_then(Value::as_str).unwrap_or("?")),
        esc(d.get("champion").and_then(Value::as_str).unwrap_or("none")),
        d.get("n").map_or("?".into(), Value::to_string),
        esc(d.get("metric").and_then(Value::as_str).unwrap_or("?")),
        score("challenger_score"),
        score("champion_score"),
    );
    if let Some(r) = d.get("reasons").and_then(Value::as_array)
        && !r.is_empty()
    {
        h.push_str("<ul>");
        for x in r {
            let _ = write!(h, "<li>{}</li>", esc(x.as_str().unwrap_or("")));
        }
        h.push_str("</ul>");
    }
}

/// Shadow agreement of the challenger the promote stage judged: how often it agreed with the
/// champion on live traffic, its flips at 0.5 and both latencies.
fn shadow_section(h: &mut String, p: &NightlyProgress, min_shadow: usize) {
    h.push_str("<h3>Shadow scoring</h3>");
    let stats: Option<ShadowStats> = p
        .output(Stage::Promote, "shadow")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let Some(s) = stats else {
        let line = match (
            p.output(Stage::Promote, "shadowed").and_then(Value::as_str),
            p.output(Stage::Promote, "named_challenger")
                .and_then(Value::as_str),
        ) {
            (Some(v), _) => format!("<code>{}</code> is in shadow: no shadow answers logged yet.", esc(v)),
            (None, Some(v)) => format!(
                "<code>{}</code> was named the challenger tonight: servers score it in shadow from now on.",
                esc(v)
            ),
            _ if min_shadow == 0 => {
                "Shadow scoring is off (<code>pipeline.min_shadow = 0</code>): a challenger is promoted on the gate alone.".into()
            }
            _ => "No challenger was in shadow for this run.".into(),
        };
        let _ = write!(h, "<p class=skip>{line}</p>");
        return;
    };
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    let ms = |m: &crate::train::Millis| format!("{:.1} / {:.1}", m.p50, m.p95);
    let _ = write!(
        h,
        "<p>Challenger <code>{}</code> beside champion <code>{}</code> on live traffic, {} to {} ({} required).</p>\
         <table><tr><th></th><th>value</th></tr>\
         <tr><td>shadow answers (distinct images)</td><td>{} ({})</td></tr>\
         <tr><td>agreement at 0.5</td><td>{}</td></tr>\
         <tr><td>flip rate at 0.5</td><td>{} ({} to roadwork, {} to clean)</td></tr>\
         <tr><td>mean |Δp|</td><td>{:.3}</td></tr>\
         <tr><td>mean P(roadwork): champion / challenger</td><td>{:.3} / {:.3}</td></tr>\
         <tr><td>tier-1 ms p50 / p95, champion</td><td>{}</td></tr>\
         <tr><td>tier-1 ms p50 / p95, challenger (same decode and encoder)</td><td>{}</td></tr>\
         <tr><td>head ms p50 / p95: champion | challenger</td><td>{} | {}</td></tr></table>\
         <p>Images where they disagree are hard cases for the next mining run (reason <code>shadow</code>).</p>",
        esc(&s.challenger),
        esc(&s.champion),
        s.first.format("%Y-%m-%d %H:%M"),
        s.last.format("%Y-%m-%d %H:%M"),
        min_shadow,
        s.n,
        s.images,
        pct(s.agreement),
        pct(s.flip_rate),
        s.flips_to_roadwork,
        s.flips_to_clean,
        s.mean_abs_diff,
        s.champion_mean,
        s.challenger_mean,
        ms(&s.champion_tier1_ms),
        ms(&s.challenger_tier1_ms),
        ms(&s.champion_head_ms),
        ms(&s.challenger_head_ms),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SelectionRow;

    fn row(id: &str, strategy: &str, reasons: &str) -> SelectionRow {
        SelectionRow {
            name: "job".into(),
            created_at: chrono::Utc::now(),
            sample_id: id.into(),
            rank: 0,
            score: 0.0,
            strategy: strategy.into(),
            reasons: reasons.into(),
        }
    }

    #[test]
    fn the_control_arm_is_counted_apart_and_yield_is_judged_by_the_choosing_head() {
        let rows = [
            row("a", "typiclust", "most typical of cluster 0"),
            row("b", "typiclust", "most typical of cluster 1"),
            row("c", "typiclust", "most typical of cluster 2"),
            row("d", "typiclust", crate::mine::CONTROL_ARM),
            row("e", "typiclust", crate::mine::CONTROL_ARM),
        ];
        let labels: HashMap<String, u8> = [("a", 1), ("b", 0), ("d", 0)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        // The head had a at 0.2 (wrong: it is roadwork), b at 0.1 (right), d unscored.
        let probs: HashMap<String, f32> = [("a", 0.2), ("b", 0.1), ("c", 0.9)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let arms = arm_yield("job", &rows, &labels, &probs);
        assert_eq!(arms.len(), 2);
        let control = arms.iter().find(|a| a.arm == "control (random)").unwrap();
        assert_eq!(
            (
                control.selected,
                control.labelled,
                control.roadwork,
                control.scored
            ),
            (2, 1, 0, 0)
        );
        let main = arms.iter().find(|a| a.arm == "typiclust").unwrap();
        assert_eq!(
            (
                main.selected,
                main.labelled,
                main.roadwork,
                main.corrected,
                main.scored
            ),
            (3, 2, 1, 1, 2)
        );
    }
}
