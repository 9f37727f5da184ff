//! Label issues by confident learning (Northcutt, Jiang & Chuang, 2021) on out-of-sample
//! probabilities, K classes (K = 2 for roadwork; the tests also run the 10-class digits reference).
//!
//! The steps, as the paper and cleanlab's documentation define them:
//! 1. per-class threshold `t_j` = mean predicted probability of class j over samples labelled j;
//! 2. the confident joint `C[given][true]`: a sample counts towards the class whose probability
//!    clears its threshold (the argmax when several do); samples clearing none are not counted;
//!    the diagonal is at least 1;
//! 3. calibration: rows rescaled to the given-label counts, the whole to n, rounded keeping row sums;
//! 4. prune by noise rate: for every off-diagonal cell (given i, true j), the `C[i][j]` samples
//!    labelled i with the largest margin `p_j − p_i` are issues (leaving at least one per class);
//! 5. a sample whose given label is (within 1e-6) the model's argmax is never an issue.

use serde::Serialize;

use super::MineError;

/// Per-sample output of confident learning.
#[derive(Debug, Clone, Serialize)]
pub struct LabelIssues {
    /// Flagged samples.
    pub is_issue: Vec<bool>,
    /// Probability of the given label (self-confidence): lower = more suspicious.
    pub label_quality: Vec<f64>,
    /// The class each sample most likely belongs to (the argmax).
    pub suggested: Vec<usize>,
    /// Calibrated confident joint, `[given][true]`.
    pub confident_joint: Vec<Vec<i64>>,
    pub thresholds: Vec<f64>,
}

impl LabelIssues {
    pub fn count(&self) -> usize {
        self.is_issue.iter().filter(|&&b| b).count()
    }

    /// Flagged samples, most suspicious (lowest self-confidence) first.
    pub fn ranked(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.is_issue.len())
            .filter(|&i| self.is_issue[i])
            .collect();
        idx.sort_by(|&a, &b| self.label_quality[a].total_cmp(&self.label_quality[b]));
        idx
    }
}

/// Rounds each row to integers keeping its (rounded) sum: the largest fractional remainders
/// absorb the difference.
fn round_rows(m: &[Vec<f64>]) -> Vec<Vec<i64>> {
    m.iter()
        .map(|row| {
            let mut ints: Vec<f64> = row.iter().map(|v| v.round()).collect();
            let target = row.iter().sum::<f64>().round();
            let mut diff = target - ints.iter().sum::<f64>();
            while diff.abs() > 1e-6 {
                let step = diff.signum();
                let mut order: Vec<usize> = (0..row.len()).collect();
                // Most under-rounded first when adding, most over-rounded first when removing.
                order.sort_by(|&a, &b| {
                    let (ra, rb) = (row[a] - ints[a], row[b] - ints[b]);
                    if step > 0.0 {
                        rb.total_cmp(&ra)
                    } else {
                        ra.total_cmp(&rb)
                    }
                });
                let changes = (diff.abs() as usize).clamp(1, row.len());
                for &i in order.iter().take(changes) {
                    ints[i] += step;
                }
                diff = target - ints.iter().sum::<f64>();
            }
            ints.iter().map(|&v| v as i64).collect()
        })
        .collect()
}

/// Confident learning over `probs` (`n × classes`, row-major, rows summing to ~1) and given labels.
pub fn find_label_issues(
    probs: &[f64],
    labels: &[usize],
    classes: usize,
) -> Result<LabelIssues, MineError> {
    let n = labels.len();
    if classes < 2 || probs.len() != n * classes {
        return Err(MineError::Shape(format!(
            "{} probabilities for {n} labels and {classes} classes",
            probs.len()
        )));
    }
    if n == 0 {
        return Err(MineError::Empty("label issues of no samples".into()));
    }
    if let Some(&bad) = labels.iter().find(|&&l| l >= classes) {
        return Err(MineError::Shape(format!("label {bad} ≥ {classes} classes")));
    }
    if let Some(i) = probs.iter().position(|p| !p.is_finite()) {
        return Err(MineError::NonFinite {
            row: i / classes,
            index: i % classes,
        });
    }
    let p = |i: usize, j: usize| probs[i * classes + j];
    let mut counts = vec![0usize; classes];
    labels.iter().for_each(|&l| counts[l] += 1);
    let present = counts.iter().filter(|&&c| c > 0).count();
    if present < 2 {
        return Err(MineError::OneClass);
    }
    // 1. thresholds (an absent class can never be confidently predicted).
    let thresholds: Vec<f64> = (0..classes)
        .map(|j| {
            if counts[j] == 0 {
                2.0
            } else {
                let s: f64 = (0..n).filter(|&i| labels[i] == j).map(|i| p(i, j)).sum();
                (s / counts[j] as f64).max(2e-6)
            }
        })
        .collect();
    let argmax = |i: usize| {
        (0..classes)
            .max_by(|&a, &b| p(i, a).total_cmp(&p(i, b)).then(b.cmp(&a)))
            .unwrap_or(0)
    };
    // 2. confident joint.
    let mut cj = vec![vec![0f64; classes]; classes];
    for i in 0..n {
        let above: Vec<usize> = (0..classes)
            .filter(|&j| p(i, j) >= thresholds[j] - 1e-6)
            .collect();
        let guess = match above.len() {
            0 => continue,
            1 => above[0],
            _ => argmax(i),
        };
        cj[labels[i]][guess] += 1.0;
    }
    for (j, row) in cj.iter_mut().enumerate() {
        row[j] = row[j].max(1.0);
    }
    // 3. calibration.
    let rows: Vec<Vec<f64>> = cj
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let s = row.iter().sum::<f64>().max(1e-100);
            row.iter().map(|v| v / s * counts[i] as f64).collect()
        })
        .collect();
    let total: f64 = rows.iter().flatten().sum::<f64>().max(1e-100);
    let scaled: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| r.iter().map(|v| v / total * n as f64).collect())
        .collect();
    let cj = round_rows(&scaled);
    // 4. prune counts, keeping at least one sample per given class. `prune[g][t]` is the number of
    //    samples labelled g to flag as truly t (cleanlab stores the transpose).
    let prune: Vec<Vec<f64>> = cj
        .iter()
        .enumerate()
        .map(|(g, row)| {
            let diag = row[g] as f64;
            let new_diag = diag.max(1.0);
            let nonzero = row.iter().filter(|&&v| v != 0).count();
            let per = (new_diag - diag) / (nonzero as f64 - 1.0).max(1.0);
            row.iter()
                .enumerate()
                .map(|(t, &v)| {
                    if t == g {
                        new_diag
                    } else {
                        (v as f64 - per).max(0.0).trunc()
                    }
                })
                .collect()
        })
        .collect();
    let mut is_issue = vec![false; n];
    for (g, to_flag) in prune.iter().enumerate() {
        let members: Vec<usize> = (0..n).filter(|&i| labels[i] == g).collect();
        if members.len() <= 1 {
            continue;
        }
        for t in (0..classes).filter(|&t| t != g) {
            let m = to_flag[t] as usize;
            if m == 0 {
                continue;
            }
            let mut order = members.clone();
            // Stable sort on descending margin: equal margins keep index order.
            order.sort_by(|&a, &b| (p(b, t) - p(b, g)).total_cmp(&(p(a, t) - p(a, g))));
            for &i in order.iter().take(m) {
                is_issue[i] = true;
            }
        }
    }
    // 5. never flag a sample the model agrees with.
    for (i, flag) in is_issue.iter_mut().enumerate() {
        let agrees = (0..classes).all(|j| {
            let pj = p(i, j);
            let pl = p(i, labels[i]) + 1e-6;
            j == labels[i] || pj <= pl
        });
        if agrees {
            *flag = false;
        }
    }
    Ok(LabelIssues {
        label_quality: (0..n).map(|i| p(i, labels[i])).collect(),
        suggested: (0..n).map(argmax).collect(),
        is_issue,
        confident_joint: cj,
        thresholds,
    })
}

/// Binary convenience: `prob` = P(class 1).
pub fn find_binary_label_issues(prob: &[f64], labels: &[u8]) -> Result<LabelIssues, MineError> {
    let probs: Vec<f64> = prob.iter().flat_map(|&q| [1.0 - q, q]).collect();
    let labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
    find_label_issues(&probs, &labels, 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_confidently_contradicted_labels_only() {
        // 20 clean samples per class and 3 labelled 1 that the model is sure are 0.
        let mut prob = Vec::new();
        let mut y = Vec::new();
        for i in 0..20 {
            prob.push(0.05 + 0.01 * (i % 5) as f64);
            y.push(0u8);
            prob.push(0.95 - 0.01 * (i % 5) as f64);
            y.push(1u8);
        }
        for _ in 0..3 {
            prob.push(0.02);
            y.push(1);
        }
        let r = find_binary_label_issues(&prob, &y).unwrap();
        let flagged: Vec<usize> = r.ranked();
        assert_eq!(flagged, vec![40, 41, 42]);
        assert_eq!(r.suggested[40], 0);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(
            find_binary_label_issues(&[0.2, 0.3], &[1, 1]),
            Err(MineError::OneClass)
        ));
        assert!(matches!(
            find_binary_label_issues(&[0.2, f64::NAN], &[0, 1]),
            Err(MineError::NonFinite { .. })
        ));
        assert!(matches!(
            find_label_issues(&[], &[], 2),
            Err(MineError::Empty(_))
        ));
        assert!(find_label_issues(&[0.5, 0.5], &[3], 2).is_err());
    }

    #[test]
    fn rounding_keeps_row_sums() {
        let r = round_rows(&[vec![0.4, 0.4, 0.4, 1.8]]);
        assert_eq!(r[0].iter().sum::<i64>(), 3);
    }
}
