//! The evaluation report: one self-contained `index.html` with inline SVG charts (ROC, PR,
//! reliability before and after calibration, confusion matrix, loss curves) and the per-slice
//! table, for a person in a browser (no network, no other file).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::TrainError;
use super::eval::Evaluation;
use super::model::ModelCard;
use crate::plot::{Chart, esc, matrix_svg, series_color};

fn plot_err(e: crate::plot::PlotError) -> TrainError {
    TrainError::Report(e.to_string())
}

fn opt(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.4}"))
}

/// The ROC, PR, reliability and confusion charts, as SVG.
fn curves(e: &Evaluation) -> Result<Vec<String>, TrainError> {
    let mut out = Vec::new();
    let mut roc = Chart::new(
        520,
        440,
        "ROC",
        "false positive rate",
        "true positive rate",
        (0.0, 1.0),
        (0.0, 1.0),
    )
    .map_err(plot_err)?;
    roc.reference((0.0, 0.0), (1.0, 1.0));
    roc.line(
        &format!("AUC {}", opt(e.metrics.roc_auc)),
        &e.roc.x,
        &e.roc.y,
        series_color(0),
    );
    out.push(roc.to_svg());

    let mut pr = Chart::new(
        520,
        440,
        "Precision-recall",
        "recall",
        "precision",
        (0.0, 1.0),
        (0.0, 1.0),
    )
    .map_err(plot_err)?;
    pr.line(
        &format!("AP {}", opt(e.metrics.pr_auc)),
        &e.pr.x,
        &e.pr.y,
        series_color(0),
    );
    out.push(pr.to_svg());

    let mut rel = Chart::new(
        520,
        440,
        "Reliability",
        "predicted P(roadwork)",
        "observed frequency",
        (0.0, 1.0),
        (0.0, 1.0),
    )
    .map_err(plot_err)?;
    rel.reference((0.0, 0.0), (1.0, 1.0));
    for (k, (name, r)) in [
        (
            format!("raw ECE {:.3}", e.uncalibrated.ece),
            &e.reliability_uncalibrated,
        ),
        (
            format!("T={:.2} ECE {:.3}", e.temperature.t, e.metrics.ece),
            &e.reliability,
        ),
    ]
    .iter()
    .enumerate()
    {
        let used: Vec<_> = r.bins.iter().filter(|b| b.count > 0).collect();
        rel.line(
            name,
            &used.iter().map(|b| b.confidence).collect::<Vec<_>>(),
            &used.iter().map(|b| b.frequency).collect::<Vec<_>>(),
            series_color(k + 1),
        );
    }
    out.push(rel.to_svg());

    let c = e.metrics.confusion;
    out.push(matrix_svg(
        "Confusion (rows: truth)",
        &["roadwork", "clean"],
        &["said yes", "said no"],
        &[vec![c.tp, c.fn_], vec![c.fp, c.tn]],
    ));
    Ok(out)
}

/// The loss curves of the folds and the final head, as SVG (none without history).
fn loss_plot(card: &ModelCard) -> Result<Option<String>, TrainError> {
    let mut series: Vec<(String, Vec<f64>, Vec<f64>)> = Vec::new();
    for (k, h) in card.fold_histories.iter().enumerate() {
        series.push((
            format!("fold {} val", k + 1),
            h.iter().map(|e| e.epoch as f64).collect(),
            h.iter().map(|e| e.val_loss.unwrap_or(f64::NAN)).collect(),
        ));
    }
    series.push((
        "final train".into(),
        card.history.iter().map(|e| e.epoch as f64).collect(),
        card.history.iter().map(|e| e.train_loss).collect(),
    ));
    let max_x = series
        .iter()
        .flat_map(|s| s.1.iter())
        .fold(1.0f64, |a, &b| a.max(b));
    let max_y = series
        .iter()
        .flat_map(|s| s.2.iter())
        .filter(|v| v.is_finite())
        .fold(0.1f64, |a, &b| a.max(b));
    if series.iter().all(|s| s.1.is_empty()) {
        return Ok(None);
    }
    let mut ch = Chart::new(
        640,
        440,
        "Loss",
        "epoch",
        "BCE",
        (1.0, max_x.max(2.0)),
        (0.0, max_y * 1.05),
    )
    .map_err(plot_err)?;
    for (k, (name, x, y)) in series.iter().enumerate() {
        ch.line(name, x, y, series_color(k));
    }
    Ok(Some(ch.to_svg()))
}

/// Writes the report into `dir` and returns the path of its `index.html`.
pub fn write_report(
    dir: &Path,
    e: &Evaluation,
    card: Option<&ModelCard>,
) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(dir).map_err(|source| TrainError::Io {
        path: dir.into(),
        source,
    })?;
    let mut charts = curves(e)?;
    if let Some(c) = card {
        charts.extend(loss_plot(c)?);
    }
    let m = &e.metrics;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{v} evaluation</title>\
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}\
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f4f4f4}}\
td:first-child{{text-align:left}}svg{{margin:6px;border:1px solid #eee}}</style></head><body>\
<h1>{v}</h1><p>Eval set <code>{set}</code>: {n} samples, {pos} roadwork. Platt scaling T = {t:.3}, \
b = {b:.3} (fitted on {fo} calibration samples){prior}.</p>",
        v = esc(&e.model_version),
        set = e.eval_set,
        n = m.n,
        pos = m.positives,
        t = e.temperature.t,
        b = e.temperature.bias,
        fo = e.temperature.fitted_on,
        prior = e.temperature.prior.map_or(String::new(), |p| format!(
            "; prior {:.1} % roadwork moved to the validators' 50 % (logit {:+.3})",
            100.0 * p,
            e.temperature.prior_shift
        )),
    );
    h.push_str("<h2>Metrics</h2><table><tr><th>metric</th><th>calibrated</th><th>raw</th></tr>");
    let u = &e.uncalibrated;
    for (name, a, b) in [
        ("accuracy", Some(m.accuracy), Some(u.accuracy)),
        ("MCC", Some(m.mcc), Some(u.mcc)),
        (
            "balanced accuracy (50/50)",
            Some(m.balanced_accuracy),
            Some(u.balanced_accuracy),
        ),
        (
            "balanced MCC (50/50)",
            Some(m.balanced_mcc),
            Some(u.balanced_mcc),
        ),
        ("F1", Some(m.f1), Some(u.f1)),
        ("precision", Some(m.precision), Some(u.precision)),
        ("recall", Some(m.recall), Some(u.recall)),
        ("ROC-AUC", m.roc_auc, u.roc_auc),
        ("PR-AUC", m.pr_auc, u.pr_auc),
        ("ECE", Some(m.ece), Some(u.ece)),
        ("Brier", Some(m.brier), Some(u.brier)),
        ("log loss", Some(m.log_loss), Some(u.log_loss)),
    ] {
        let _ = write!(
            h,
            "<tr><td>{name}</td><td>{}</td><td>{}</td></tr>",
            opt(a),
            opt(b)
        );
    }
    h.push_str("</table>");
    if let Some(r) = &e.replay {
        let _ = write!(
            h,
            "<h2>Subnet reward replay</h2><p>{q} validator queries (50/50 labels): mean reward \
{mr:.4} per query after the first 100{ci}, validator EMA {ema:.4}.</p>",
            q = r.queries,
            mr = r.mean_reward,
            ci = r.interval.map_or(String::new(), |i| format!(
                " ({:.0} % bootstrap interval {:.4} – {:.4} over {} resamples of the eval set)",
                100.0 * i.level,
                i.lo,
                i.hi,
                i.resamples
            )),
            ema = r.final_ema
        );
    }
    if let Some(sm) = card.and_then(|c| c.metrics_synthetic.as_ref()) {
        let _ = write!(
            h,
            "<h2>Held-out synthetic images</h2><p>{n} images of the <code>eval_synthetic</code> \
split ({pos} roadwork), never in the real eval set above: accuracy {acc:.4}, MCC {mcc:.4}, \
balanced accuracy {bacc:.4}, ROC-AUC {auc}. A gap to the real metrics is how far the synthetic \
images are from what the head meets in traffic.</p>",
            n = sm.n,
            pos = sm.positives,
            acc = sm.accuracy,
            mcc = sm.mcc,
            bacc = sm.balanced_accuracy,
            auc = opt(sm.roc_auc),
        );
    }
    if let Some(a) = e
        .augmented
        .as_ref()
        .or(card.and_then(|c| c.metrics_augmented.as_ref()))
    {
        let am = &a.metrics;
        let _ = write!(
            h,
            "<h2>Validator-augmented copies (the era before 2026-05-03)</h2><p>{n} distorted \
224² JPEG copies of the eval samples above ({pos} roadwork), made as validators made their \
challenges (levels 0–3, JPEG quality 75); the head trained on {tr} copies of training samples. \
Accuracy {acc:.4}, MCC {mcc:.4}, balanced MCC {bmcc:.4}, ROC-AUC {auc}{reward}.</p>",
            n = a.n,
            pos = am.positives,
            tr = a.trained_on,
            acc = am.accuracy,
            mcc = am.mcc,
            bmcc = am.balanced_mcc,
            auc = opt(am.roc_auc),
            reward = a.replay.as_ref().map_or(String::new(), |r| format!(
                "; replayed reward {:.4}{}",
                r.mean_reward,
                r.interval.map_or(String::new(), |i| format!(
                    " ({:.0} % interval {:.4} – {:.4})",
                    100.0 * i.level,
                    i.lo,
                    i.hi
                ))
            )),
        );
        h.push_str("<h3>Per level</h3>");
        slice_table(&mut h, &a.levels);
        h.push_str("<h3>Per distortion family (any strength)</h3>");
        slice_table(&mut h, &a.distortions);
    }
    h.push_str("<h2>Plots</h2>");
    for svg in &charts {
        h.push_str(svg);
    }
    h.push_str("<h2>Slices</h2>");
    slice_table(&mut h, &e.slices);
    if let Some(c) = card {
        let _ = write!(
            h,
            "<h2>Lineage</h2><p>Embeddings <code>{emb}</code>, snapshot <code>{snap}</code>, seed {seed}, \
final head trained {fe} epochs (fold best epochs {fb:?}), weights sha256 <code>{sha}</code>.</p>",
            emb = esc(&c.embedding_model),
            snap = esc(&c.snapshot),
            seed = c.seed,
            fe = c.final_epochs,
            fb = c.fold_best_epochs,
            sha = c.weights_sha256
        );
    }
    h.push_str("</body></html>\n");
    let index = dir.join("index.html");
    std::fs::write(&index, h).map_err(|source| TrainError::Io {
        path: index.clone(),
        source,
    })?;
    Ok(index)
}

/// One table row per slice: n, positives, accuracy, MCC, F1, ROC-AUC.
fn slice_table(h: &mut String, slices: &[super::eval::SliceMetrics]) {
    h.push_str(
        "<table><tr><th>slice</th><th>n</th><th>roadwork</th><th>accuracy</th>\
<th>MCC</th><th>F1</th><th>ROC-AUC</th></tr>",
    );
    for s in slices {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{}</td></tr>",
            esc(&s.slice),
            s.n,
            s.positives,
            s.accuracy,
            s.mcc,
            s.f1,
            opt(s.roc_auc)
        );
    }
    h.push_str("</table>");
}
