//! Binary classification metrics on probabilities, with the subnet's decision rule: a sample is
//! called roadwork when p > 0.5 strictly (numpy's banker's rounding sends 0.5 to 0).

use serde::{Deserialize, Serialize};

/// Counts at the 0.5 threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
}

impl Confusion {
    /// Counts of `predicted` (0/1) against `labels`.
    pub fn of(predicted: impl Iterator<Item = u8>, labels: &[u8]) -> Self {
        let mut c = Self::default();
        for (p, &y) in predicted.zip(labels) {
            match (p, y) {
                (1, 1) => c.tp += 1,
                (1, _) => c.fp += 1,
                (_, 1) => c.fn_ += 1,
                _ => c.tn += 1,
            }
        }
        c
    }

    pub fn n(&self) -> u64 {
        self.tp + self.fp + self.tn + self.fn_
    }

    pub fn accuracy(&self) -> f64 {
        ratio(self.tp + self.tn, self.n())
    }

    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    pub fn f1(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    /// Mean of the recalls of both classes: the accuracy on a 50/50 draw of these samples, which
    /// is how validators draw challenges.
    pub fn balanced_accuracy(&self) -> f64 {
        let tnr = ratio(self.tn, self.tn + self.fp);
        match (self.tp + self.fn_ > 0, self.tn + self.fp > 0) {
            (true, true) => 0.5 * (self.recall() + tnr),
            (true, false) => self.recall(),
            (false, true) => tnr,
            (false, false) => 0.0,
        }
    }

    /// MCC of the confusion reweighted to 50/50 classes (each class's counts divided by its
    /// size): the expected MCC of a validator's label-balanced window of these samples, where the
    /// plain MCC mixes in the eval set's own prior. 0 with one class only.
    pub fn balanced_mcc(&self) -> f64 {
        let (p, n) = ((self.tp + self.fn_) as f64, (self.tn + self.fp) as f64);
        if p == 0.0 || n == 0.0 {
            return 0.0;
        }
        let (tp, fn_, tn, fp) = (
            self.tp as f64 / p,
            self.fn_ as f64 / p,
            self.tn as f64 / n,
            self.fp as f64 / n,
        );
        let den = ((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_)).sqrt();
        if den == 0.0 {
            0.0
        } else {
            (tp * tn - fp * fn_) / den
        }
    }

    /// Matthews correlation; 0 when any marginal is empty (as scikit-learn returns).
    pub fn mcc(&self) -> f64 {
        let (tp, fp, tn, fn_) = (
            self.tp as f64,
            self.fp as f64,
            self.tn as f64,
            self.fn_ as f64,
        );
        let den = ((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_)).sqrt();
        if den == 0.0 {
            0.0
        } else {
            (tp * tn - fp * fn_) / den
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// The subnet's call: roadwork iff p > 0.5.
pub fn decide(p: f32) -> u8 {
    u8::from(p > 0.5)
}

/// Every metric the registry and the promotion gate look at.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub n: u64,
    pub positives: u64,
    pub accuracy: f64,
    pub mcc: f64,
    /// Accuracy and MCC as a 50/50 resample of the set would measure them (the validators'
    /// draw; see [`Confusion::balanced_mcc`]). Absent in cards before format 3.
    #[serde(default)]
    pub balanced_accuracy: f64,
    #[serde(default)]
    pub balanced_mcc: f64,
    pub f1: f64,
    pub precision: f64,
    pub recall: f64,
    /// Area under the ROC curve (ties count one half); `None` with one class only.
    pub roc_auc: Option<f64>,
    /// Average precision (area under the step PR curve); `None` without positives.
    pub pr_auc: Option<f64>,
    /// Expected calibration error, 15 equal-width bins.
    pub ece: f64,
    /// Mean squared error of the probability.
    pub brier: f64,
    /// Mean negative log-likelihood (probabilities clamped to [1e-7, 1 − 1e-7]).
    pub log_loss: f64,
    pub confusion: Confusion,
}

/// Bins of the reliability diagram and of ECE.
pub const ECE_BINS: usize = 15;

impl Metrics {
    /// All metrics of `probs` against 0/1 `labels` (same length).
    pub fn compute(probs: &[f32], labels: &[u8]) -> Self {
        let confusion = Confusion::of(probs.iter().map(|&p| decide(p)), labels);
        let n = probs.len() as f64;
        let (mut brier, mut ll) = (0.0, 0.0);
        for (&p, &y) in probs.iter().zip(labels) {
            let (p, y) = (p as f64, y as f64);
            brier += (p - y).powi(2);
            let pc = p.clamp(1e-7, 1.0 - 1e-7);
            ll -= y * pc.ln() + (1.0 - y) * (1.0 - pc).ln();
        }
        Self {
            n: confusion.n(),
            positives: labels.iter().filter(|&&y| y == 1).count() as u64,
            accuracy: confusion.accuracy(),
            mcc: confusion.mcc(),
            balanced_accuracy: confusion.balanced_accuracy(),
            balanced_mcc: confusion.balanced_mcc(),
            f1: confusion.f1(),
            precision: confusion.precision(),
            recall: confusion.recall(),
            roc_auc: roc_auc(probs, labels),
            pr_auc: average_precision(probs, labels),
            ece: reliability(probs, labels, ECE_BINS).ece,
            brier: if n > 0.0 { brier / n } else { 0.0 },
            log_loss: if n > 0.0 { ll / n } else { 0.0 },
            confusion,
        }
    }
}

/// Indices sorted by descending probability.
fn by_score_desc(probs: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    idx
}

/// ROC-AUC by the rank-sum (Mann–Whitney) formula with average ranks for ties.
pub fn roc_auc(probs: &[f32], labels: &[u8]) -> Option<f64> {
    let pos = labels.iter().filter(|&&y| y == 1).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[a].total_cmp(&probs[b]));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && probs[idx[j + 1]] == probs[idx[i]] {
            j += 1;
        }
        // Ranks i+1..=j+1 share their average.
        let avg = (i + j + 2) as f64 / 2.0;
        rank_sum += idx[i..=j].iter().filter(|&&k| labels[k] == 1).count() as f64 * avg;
        i = j + 1;
    }
    let (p, n) = (pos as f64, neg as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// Points of a curve, thresholds descending (one point per distinct score).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    pub x: Vec<f64>,
    pub y: Vec<f64>,
}

/// Cumulative (tp, fp) after each distinct threshold, descending.
fn sweep(probs: &[f32], labels: &[u8]) -> Vec<(f64, f64)> {
    let idx = by_score_desc(probs);
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut out = Vec::new();
    for (k, &i) in idx.iter().enumerate() {
        if labels[i] == 1 {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        let last_of_tie = idx.get(k + 1).is_none_or(|&j| probs[j] != probs[i]);
        if last_of_tie {
            out.push((tp, fp));
        }
    }
    out
}

/// ROC curve: x = false-positive rate, y = true-positive rate, from (0,0) to (1,1).
pub fn roc_curve(probs: &[f32], labels: &[u8]) -> Curve {
    let pos = labels.iter().filter(|&&y| y == 1).count().max(1) as f64;
    let neg = (labels.len() as f64 - labels.iter().filter(|&&y| y == 1).count() as f64).max(1.0);
    let mut c = Curve {
        x: vec![0.0],
        y: vec![0.0],
    };
    for (tp, fp) in sweep(probs, labels) {
        c.x.push(fp / neg);
        c.y.push(tp / pos);
    }
    c
}

/// Precision–recall curve: x = recall, y = precision.
pub fn pr_curve(probs: &[f32], labels: &[u8]) -> Curve {
    let pos = labels.iter().filter(|&&y| y == 1).count().max(1) as f64;
    let mut c = Curve::default();
    for (tp, fp) in sweep(probs, labels) {
        c.x.push(tp / pos);
        c.y.push(tp / (tp + fp));
    }
    c
}

/// Average precision: Σ (R_k − R_{k−1}) · P_k over distinct thresholds (scikit-learn's definition).
pub fn average_precision(probs: &[f32], labels: &[u8]) -> Option<f64> {
    if !labels.contains(&1) {
        return None;
    }
    let c = pr_curve(probs, labels);
    let mut prev_r = 0.0;
    let mut ap = 0.0;
    for (r, p) in c.x.iter().zip(&c.y) {
        ap += (r - prev_r) * p;
        prev_r = *r;
    }
    Some(ap)
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    pub lo: f64,
    pub hi: f64,
    pub count: u64,
    /// Mean predicted probability in the bin.
    pub confidence: f64,
    /// Observed share of positives in the bin.
    pub frequency: f64,
}

/// A reliability diagram and its expected calibration error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reliability {
    pub bins: Vec<ReliabilityBin>,
    /// Σ (count/n) · |frequency − confidence|.
    pub ece: f64,
}

/// Equal-width bins over [0,1] of P(roadwork) against the observed positive rate.
pub fn reliability(probs: &[f32], labels: &[u8], bins: usize) -> Reliability {
    let bins = bins.max(1);
    let mut sum_p = vec![0.0; bins];
    let mut sum_y = vec![0.0; bins];
    let mut count = vec![0u64; bins];
    for (&p, &y) in probs.iter().zip(labels) {
        let b = ((p as f64 * bins as f64) as usize).min(bins - 1);
        sum_p[b] += p as f64;
        sum_y[b] += y as f64;
        count[b] += 1;
    }
    let n = probs.len().max(1) as f64;
    let mut ece = 0.0;
    let out = (0..bins)
        .map(|b| {
            let c = count[b] as f64;
            let (conf, freq) = if c > 0.0 {
                (sum_p[b] / c, sum_y[b] / c)
            } else {
                (0.0, 0.0)
            };
            ece += c / n * (freq - conf).abs();
            ReliabilityBin {
                lo: b as f64 / bins as f64,
                hi: (b + 1) as f64 / bins as f64,
                count: count[b],
                confidence: conf,
                frequency: freq,
            }
        })
        .collect();
    Reliability { bins: out, ece }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_counts_and_scores() {
        // p > 0.5 is positive; 0.5 exactly is negative.
        let p = [0.9, 0.8, 0.5, 0.3, 0.6, 0.1];
        let y = [1, 1, 1, 0, 0, 0];
        let m = Metrics::compute(&p, &y);
        assert_eq!(
            m.confusion,
            Confusion {
                tp: 2,
                fp: 1,
                tn: 2,
                fn_: 1
            }
        );
        assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-12);
        // (2·2 − 1·1) / sqrt(3·3·3·3) = 3/9
        assert!((m.mcc - 1.0 / 3.0).abs() < 1e-12);
        // Pairs (pos, neg): 9 total; pos scores .9 .8 .5 vs neg .3 .6 .1 → .9:3 .8:3 .5:2 = 8/9.
        assert!((m.roc_auc.unwrap() - 8.0 / 9.0).abs() < 1e-12);
        // Ranking: .9(+) .8(+) .6(−) .5(+) → AP = 1/3·1 + 1/3·1 + 1/3·3/4.
        assert!((m.pr_auc.unwrap() - (2.0 + 0.75) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn ties_count_half_and_one_class_has_no_auc() {
        assert_eq!(roc_auc(&[0.5, 0.5], &[1, 0]), Some(0.5));
        assert_eq!(roc_auc(&[0.2, 0.7], &[1, 1]), None);
        assert_eq!(Confusion::of([1u8, 1].into_iter(), &[1, 1]).mcc(), 0.0);
    }

    #[test]
    fn ece_of_a_perfectly_calibrated_bin_is_zero_and_of_an_overconfident_one_is_not() {
        // Ten samples at p = 0.7, seven positive: calibrated.
        let p = [0.7f32; 10];
        let y = [1, 1, 1, 1, 1, 1, 1, 0, 0, 0];
        assert!(reliability(&p, &y, 15).ece < 1e-6);
        let p = [0.99f32; 10];
        assert!((reliability(&p, &y, 15).ece - 0.29).abs() < 1e-6);
    }

    #[test]
    fn balanced_metrics_are_those_of_a_fifty_fifty_resample() {
        // 90 negatives (81 right), 10 positives (5 right).
        let c = Confusion {
            tp: 5,
            fn_: 5,
            tn: 81,
            fp: 9,
        };
        assert!((c.balanced_accuracy() - 0.5 * (0.5 + 0.9)).abs() < 1e-12);
        // The same rates on 100 + 100: tp 50, fn 50, tn 90, fp 10.
        let resampled = Confusion {
            tp: 50,
            fn_: 50,
            tn: 90,
            fp: 10,
        };
        assert!((c.balanced_mcc() - resampled.mcc()).abs() < 1e-12);
        assert!((resampled.balanced_mcc() - resampled.mcc()).abs() < 1e-12);
        assert!(c.balanced_mcc() > c.mcc());
        let one_class = Confusion {
            tp: 3,
            fn_: 1,
            ..Default::default()
        };
        assert_eq!(one_class.balanced_mcc(), 0.0);
        assert!((one_class.balanced_accuracy() - 0.75).abs() < 1e-12);
    }
}
