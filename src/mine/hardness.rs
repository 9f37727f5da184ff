//! One hard-case score per sample, with the reasons behind it.
//!
//! Each signal is mapped to [0, 1] and the hardness is the largest of them, so one strong reason
//! is enough and the reason list says which:
//! - `uncertain`: calibrated probability near 0.5, `1 − |2p − 1|` (binary uncertainty is only
//!   meaningful once calibrated; the head's served probability is);
//! - `ensemble`: head-ensemble disagreement, BALD mutual information ÷ ln 2 (its binary maximum);
//! - `tiers`: |tier 1 − tier 2| where the serving cascade ran both;
//! - `shadow`: the champion and the challenger scored in shadow disagree: `0.5 + 0.5 × |Δp|` when
//!   they answer on different sides of 0.5, `|Δp|` when not (mean over the image's requests);
//! - `label-issue`: confident learning flagged the label: `0.5 + 0.5 × (1 − P(given label))`;
//! - `outlier`: mean kNN distance above the fence: `0.5 + 0.5 × min(1, excess ÷ fence)`.

use serde::Serialize;

/// The signals known for one sample (`None` = not measured for it).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Signals {
    pub prob: Option<f64>,
    pub ensemble_mi: Option<f64>,
    pub tier_gap: Option<f64>,
    /// Mean [`shadow_signal`] over the image's shadow comparisons.
    pub shadow: Option<f64>,
    /// `Some(P(given label))` when confident learning flagged the label.
    pub label_issue: Option<f64>,
    /// `Some((mean kNN distance, fence))` for an outlier.
    pub outlier: Option<(f64, f64)>,
}

/// A sample's hardness and why.
#[derive(Debug, Clone, Serialize)]
pub struct HardCase {
    pub hardness: f64,
    pub uncertainty: Option<f64>,
    pub ensemble: Option<f64>,
    pub tiers: Option<f64>,
    pub shadow: Option<f64>,
    pub label_issue: Option<f64>,
    pub outlier: Option<f64>,
    /// Signals at or above `reason_min`, strongest first, e.g. `label-issue (0.93)`.
    pub reasons: Vec<String>,
}

/// How hard one shadow comparison makes an image: a flip at 0.5 is at least 0.5.
pub fn shadow_signal(champion: f32, challenger: f32) -> f64 {
    let gap = (champion - challenger).abs() as f64;
    if (champion > 0.5) != (challenger > 0.5) {
        0.5 + 0.5 * gap
    } else {
        gap
    }
}

fn finite01(v: Option<f64>) -> Option<f64> {
    v.filter(|x| x.is_finite()).map(|x| x.clamp(0.0, 1.0))
}

/// Scores one sample; components that were not measured stay `None`, non-finite inputs are
/// treated as not measured.
pub fn score(s: &Signals, reason_min: f64) -> HardCase {
    let uncertainty = finite01(s.prob.map(|p| 1.0 - (2.0 * p - 1.0).abs()));
    let ensemble = finite01(s.ensemble_mi.map(|mi| mi / std::f64::consts::LN_2));
    let tiers = finite01(s.tier_gap.map(f64::abs));
    let shadow = finite01(s.shadow);
    let label_issue = finite01(s.label_issue.map(|q| 0.5 + 0.5 * (1.0 - q)));
    let outlier = finite01(s.outlier.and_then(|(m, fence)| {
        (fence > 0.0 && m > fence).then(|| 0.5 + 0.5 * ((m - fence) / fence).min(1.0))
    }));
    let mut parts: Vec<(&str, f64)> = [
        ("uncertain", uncertainty),
        ("ensemble", ensemble),
        ("tiers", tiers),
        ("shadow", shadow),
        ("label-issue", label_issue),
        ("outlier", outlier),
    ]
    .into_iter()
    .filter_map(|(n, v)| v.map(|v| (n, v)))
    .collect();
    parts.sort_by(|a, b| b.1.total_cmp(&a.1));
    HardCase {
        hardness: parts.first().map_or(0.0, |p| p.1),
        reasons: parts
            .iter()
            .filter(|p| p.1 >= reason_min)
            .map(|(n, v)| format!("{n} ({v:.2})"))
            .collect(),
        uncertainty,
        ensemble,
        tiers,
        shadow,
        label_issue,
        outlier,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strongest_signal_sets_the_score_and_leads_the_reasons() {
        let h = score(
            &Signals {
                prob: Some(0.9),
                label_issue: Some(0.1),
                tier_gap: Some(0.6),
                ..Default::default()
            },
            0.5,
        );
        assert!((h.hardness - 0.95).abs() < 1e-12);
        assert_eq!(h.reasons, vec!["label-issue (0.95)", "tiers (0.60)"]);
        assert!((h.uncertainty.unwrap() - 0.2).abs() < 1e-12);
    }

    #[test]
    fn a_shadow_flip_is_a_hard_case_and_agreement_is_not() {
        assert!((shadow_signal(0.4, 0.7) - 0.65).abs() < 1e-6);
        assert!((shadow_signal(0.8, 0.7) - 0.1).abs() < 1e-6);
        let h = score(
            &Signals {
                prob: Some(0.95),
                shadow: Some(shadow_signal(0.4, 0.9)),
                ..Default::default()
            },
            0.5,
        );
        assert_eq!(h.reasons, vec!["shadow (0.75)"]);
    }

    #[test]
    fn nothing_measured_or_non_finite_is_zero_and_finite() {
        let h = score(&Signals::default(), 0.5);
        assert_eq!(h.hardness, 0.0);
        assert!(h.reasons.is_empty());
        let h = score(
            &Signals {
                prob: Some(f64::NAN),
                ensemble_mi: Some(f64::INFINITY),
                ..Default::default()
            },
            0.5,
        );
        assert_eq!(h.hardness, 0.0);
        let h = score(
            &Signals {
                prob: Some(0.5),
                ..Default::default()
            },
            0.5,
        );
        assert_eq!(h.hardness, 1.0);
    }
}
