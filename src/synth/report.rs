//! The synthesis report: `<dir>/<run>.md` and `<dir>/<run>.html` (one self-contained file with
//! inline SVG charts and thumbnails). Per gap: what was asked, generated, accepted, refused and
//! why, the spend, coverage before → after, and the shortcut audit.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::SynthError;
use super::check::Verdict;
use super::plan::Plan;
use super::run::SynthSummary;
use crate::plot::{Chart, esc, series_color};
use crate::store::SynthStatus;

/// Thumbnails shown per gap and outcome.
const THUMBS: usize = 8;

/// The run's totals, one line each.
fn totals(s: &SynthSummary) -> [String; 3] {
    [
        format!(
            "planned {} images ({} made by earlier runs, {} left out by the budget)",
            s.planned, s.already_done, s.over_budget
        ),
        format!(
            "sent {}, accepted {} ({} roadwork, {} clean)",
            s.sent, s.accepted, s.accepted_roadwork, s.accepted_clean
        ),
        format!(
            "spent ${:.2} on {} billed calls",
            s.spent_usd, s.images_billed
        ),
    ]
}

fn markdown(s: &SynthSummary, plan: &Plan) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# Synthesis run {}\n", s.run_id);
    let _ = writeln!(
        m,
        "Backend **{}**, mining run `{}`, embeddings `{}`, seed {}.\n",
        s.backend, s.mine_run, s.embedding_model, plan.seed
    );
    for line in totals(s) {
        let _ = writeln!(m, "- {line}");
    }
    m.push('\n');
    let _ = writeln!(m, "## Gaps\n");
    let _ = writeln!(
        m,
        "| gap | why | asked | made | accepted | refused | spent | coverage before → after |"
    );
    let _ = writeln!(m, "|---|---|---:|---:|---:|---|---:|---|");
    for g in &s.gaps {
        let refused: Vec<String> = g.rejected.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let cov = g.coverage();
        let _ = writeln!(
            m,
            "| `{}` | {} | {} | {} | {} | {} | ${:.2} | {} |",
            g.gap,
            g.why,
            g.asked,
            g.generated,
            g.accepted,
            refused.join(", "),
            g.spent_usd,
            cov
        );
    }
    if !s.not_accepted.is_empty() {
        let _ = writeln!(m, "\n## Not accepted, by reason\n");
        for (k, v) in &s.not_accepted {
            let _ = writeln!(m, "- {k}: {v}");
        }
    }
    let _ = writeln!(m, "\n## Shortcut audit\n");
    let _ = writeln!(
        m,
        "A linear probe tries to tell synthetic from real images of a cluster (held-out AUC; 0.5 = indistinguishable). A flagged cluster is one where a head could learn \"synthetic\" instead of \"roadwork\".\n"
    );
    let _ = writeln!(m, "| cluster | real | synthetic | AUC | flagged |");
    let _ = writeln!(m, "|---|---:|---:|---:|---|");
    for a in &s.audit {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} |",
            a.cluster.map_or("all".into(), |c| c.to_string()),
            a.real,
            a.synthetic,
            a.auc.map_or("too few".into(), |x| format!("{x:.2}")),
            if a.flagged { "**yes**" } else { "no" }
        );
    }
    if !s.notes.is_empty() {
        let _ = writeln!(m, "\n## Notes\n");
        for n in &s.notes {
            let _ = writeln!(m, "- {n}");
        }
    }
    m
}

fn coverage_chart(s: &SynthSummary) -> Option<String> {
    let gaps: Vec<_> = s
        .gaps
        .iter()
        .filter(|g| g.before.is_some() && g.after.is_some())
        .collect();
    if gaps.is_empty() {
        return None;
    }
    let top = gaps
        .iter()
        .flat_map(|g| [g.before, g.after, g.goal])
        .flatten()
        .fold(0.0f64, f64::max)
        .max(0.01)
        * 110.0;
    let mut c = Chart::new(
        720,
        300,
        "Coverage of each gap, before → after (dashed: goal)",
        "gap (in the table's order)",
        "% (training share / minority share)",
        (0.0, gaps.len() as f64),
        (0.0, top),
    )
    .ok()?;
    let at = |i: usize, k: f64| (i as f64 + 0.1 + k * 0.4, i as f64 + 0.1 + (k + 1.0) * 0.4);
    let before: Vec<(f64, f64, f64)> = gaps
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let (a, b) = at(i, 0.0);
            (a, b, 100.0 * g.before.unwrap_or(0.0))
        })
        .collect();
    let after: Vec<(f64, f64, f64)> = gaps
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let (a, b) = at(i, 1.0);
            (a, b, 100.0 * g.after.unwrap_or(0.0))
        })
        .collect();
    c.bars("before", &before, series_color(0));
    c.bars("after", &after, series_color(1));
    for (i, g) in gaps.iter().enumerate() {
        if let Some(goal) = g.goal {
            c.reference((i as f64, 100.0 * goal), (i as f64 + 1.0, 100.0 * goal));
        }
    }
    Some(c.to_svg())
}

fn html(s: &SynthSummary, plan: &Plan, verdicts: &[Verdict]) -> String {
    let md = markdown(s, plan);
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Synthesis {}</title><style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}}.thumbs{{display:flex;flex-wrap:wrap;gap:6px}}figure{{margin:0;width:136px;font-size:11px}}figure img{{width:128px;border:3px solid #ccc}}figure.ok img{{border-color:#009e73}}figure.no img{{border-color:#d55e00}}code{{font-size:12px}}</style></head><body>",
        esc(&s.run_id)
    );
    let _ = write!(
        h,
        "<h1>Synthesis run {}</h1><p>Backend <b>{}</b>, mining run <code>{}</code>, embeddings <code>{}</code>, seed {}.</p><ul>",
        esc(&s.run_id),
        esc(&s.backend),
        esc(&s.mine_run),
        esc(&s.embedding_model),
        plan.seed
    );
    for line in totals(s) {
        let _ = write!(h, "<li>{}</li>", esc(&line));
    }
    h.push_str("</ul>");
    if let Some(svg) = coverage_chart(s) {
        h.push_str(&svg);
    }
    let _ = write!(
        h,
        "<h2>Gaps</h2><table><tr><th>gap</th><th>why</th><th>asked</th><th>made</th><th>accepted</th><th>refused</th><th>spent</th><th>coverage before → after</th></tr>"
    );
    for g in &s.gaps {
        let refused: Vec<String> = g.rejected.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let cov = g.coverage();
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>${:.2}</td><td>{}</td></tr>",
            esc(&g.gap),
            esc(&g.why),
            g.asked,
            g.generated,
            g.accepted,
            esc(&refused.join(", ")),
            g.spent_usd,
            cov
        );
    }
    h.push_str("</table>");
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    for g in &s.gaps {
        let _ = write!(h, "<h3><code>{}</code></h3>", esc(&g.gap));
        for (class, accepted) in [("ok", true), ("no", false)] {
            let shown: Vec<&Verdict> = verdicts
                .iter()
                .filter(|v| v.job.gap == g.gap)
                .filter(|v| (v.status == SynthStatus::Accepted) == accepted)
                .filter(|v| v.thumbnail.is_some())
                .take(THUMBS)
                .collect();
            if shown.is_empty() {
                continue;
            }
            let _ = write!(
                h,
                "<p>{}</p><div class=\"thumbs\">",
                if accepted { "Accepted" } else { "Refused" }
            );
            for v in shown {
                let caption = if accepted {
                    format!(
                        "{} · {} · d={}",
                        v.job.label.as_str(),
                        v.job.task.as_str(),
                        v.distance.map_or("–".into(), |d| format!("{d:.3}"))
                    )
                } else {
                    v.reason.clone()
                };
                let _ = write!(
                    h,
                    "<figure class=\"{class}\"><img alt=\"{}\" src=\"data:image/jpeg;base64,{}\"><figcaption>{}</figcaption></figure>",
                    esc(&v.job.prompt),
                    b64(v.thumbnail.as_deref().unwrap_or_default()),
                    esc(&caption)
                );
            }
            h.push_str("</div>");
        }
    }
    // The audit and the notes as in the Markdown (tables rendered as HTML).
    let _ = write!(
        h,
        "<h2>Shortcut audit</h2><p>A linear probe tries to tell synthetic from real images of a cluster (held-out AUC; 0.5 = indistinguishable). A flagged cluster is one where a head could learn “synthetic” instead of “roadwork”.</p><table><tr><th>cluster</th><th>real</th><th>synthetic</th><th>AUC</th><th>flagged</th></tr>"
    );
    for a in &s.audit {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            a.cluster.map_or("all".into(), |c| c.to_string()),
            a.real,
            a.synthetic,
            a.auc.map_or("too few".into(), |x| format!("{x:.2}")),
            if a.flagged { "<b>yes</b>" } else { "no" }
        );
    }
    h.push_str("</table>");
    if !s.notes.is_empty() {
        h.push_str("<h2>Notes</h2><ul>");
        for n in &s.notes {
            let _ = write!(h, "<li>{}</li>", esc(n));
        }
        h.push_str("</ul>");
    }
    let _ = write!(
        h,
        "<!-- markdown twin: {} bytes --></body></html>",
        md.len()
    );
    h
}

/// Writes both files; returns the HTML's path.
pub fn write(
    dir: &Path,
    s: &SynthSummary,
    plan: &Plan,
    verdicts: &[Verdict],
) -> Result<PathBuf, SynthError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SynthError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let md = dir.join(format!("{}.md", s.run_id));
    std::fs::write(&md, markdown(s, plan)).map_err(io(&md))?;
    let page = dir.join(format!("{}.html", s.run_id));
    std::fs::write(&page, html(s, plan, verdicts)).map_err(io(&page))?;
    Ok(page)
}
