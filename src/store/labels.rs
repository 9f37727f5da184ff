//! The precedence rule that turns many labels per sample into one effective label.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::ids::{Label, LabelSource, SampleId};
use super::schema::LabelRow;

/// The label training and evaluation use for one sample, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct EffectiveLabel {
    pub sample_id: SampleId,
    pub label: Label,
    pub source: LabelSource,
    pub author: String,
    pub confidence: f32,
    pub ts: DateTime<Utc>,
    /// How many label rows (all sources, all authors) the sample has; > 1 with disagreement is a
    /// review candidate.
    pub n_labels: usize,
    /// Whether any other label row for the sample says the other class.
    pub disputed: bool,
}

/// Effective label per sample: the highest-precedence source wins (human > dataset > synthetic >
/// teacher); within that source the most recent label wins; ties on time go to the lexically
/// smallest author so the answer never depends on scan order.
pub fn effective_labels(rows: &[LabelRow]) -> Vec<EffectiveLabel> {
    let mut by_sample: HashMap<&SampleId, Vec<&LabelRow>> = HashMap::new();
    for r in rows {
        by_sample.entry(&r.sample_id).or_default().push(r);
    }
    let mut out: Vec<EffectiveLabel> = by_sample
        .into_values()
        .filter_map(|group| {
            let best = group.iter().copied().max_by(|a, b| {
                (a.source.precedence(), a.ts)
                    .cmp(&(b.source.precedence(), b.ts))
                    .then_with(|| b.author.cmp(&a.author))
            })?;
            Some(EffectiveLabel {
                sample_id: best.sample_id.clone(),
                label: best.label,
                source: best.source,
                author: best.author.clone(),
                confidence: best.confidence,
                ts: best.ts,
                n_labels: group.len(),
                disputed: group.iter().any(|r| r.label != best.label),
            })
        })
        .collect();
    out.sort_by(|a, b| a.sample_id.cmp(&b.sample_id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn row(id: &SampleId, label: Label, source: LabelSource, author: &str, t: i64) -> LabelRow {
        LabelRow {
            sample_id: id.clone(),
            label,
            source,
            confidence: 1.0,
            author: author.into(),
            ts: Utc.timestamp_opt(t, 0).unwrap(),
        }
    }

    #[test]
    fn human_beats_newer_dataset_and_latest_wins_within_source() {
        let a = SampleId::of_bytes(b"a");
        let b = SampleId::of_bytes(b"b");
        let rows = vec![
            row(&a, Label::Roadwork, LabelSource::Teacher, "vlm", 500),
            row(&a, Label::Clean, LabelSource::Dataset, "natix", 300),
            row(&a, Label::Roadwork, LabelSource::Human, "ann", 100),
            row(&b, Label::Clean, LabelSource::Human, "ann", 100),
            row(&b, Label::Roadwork, LabelSource::Human, "bob", 200),
        ];
        let eff = effective_labels(&rows);
        let get = |id: &SampleId| eff.iter().find(|e| &e.sample_id == id).unwrap();
        assert_eq!(get(&a).label, Label::Roadwork);
        assert_eq!(get(&a).source, LabelSource::Human);
        assert_eq!(get(&a).n_labels, 3);
        assert!(get(&a).disputed);
        assert_eq!(get(&b).label, Label::Roadwork);
        assert_eq!(get(&b).author, "bob");
    }

    #[test]
    fn order_of_rows_does_not_matter() {
        let a = SampleId::of_bytes(b"a");
        let mut rows = vec![
            row(&a, Label::Roadwork, LabelSource::Synthetic, "gen-b", 100),
            row(&a, Label::Clean, LabelSource::Synthetic, "gen-a", 100),
        ];
        let first = effective_labels(&rows);
        rows.reverse();
        assert_eq!(first, effective_labels(&rows));
        assert_eq!(first[0].author, "gen-a");
    }
}
