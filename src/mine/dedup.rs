//! Duplicates of three kinds and the leakage they cause between sets.
//!
//! - **exact**: the same bytes. Samples are keyed by the sha256 of their bytes, so the store holds
//!   one row per content; exact duplicates show up as one sample in several sets (an eval image
//!   that a validator sent again, say).
//! - **re-encoded**: 64-bit perceptual hashes within `max_hamming` bits. Found by multi-index
//!   hashing: split the hash into `max_hamming + 1` bands; by pigeonhole two hashes within the
//!   distance agree exactly on at least one band, so only same-band buckets are compared.
//!   `O(n · bucket size)`, not `O(n²)`.
//! - **near**: kNN-graph neighbours closer than `factor ×` the median nearest-neighbour distance
//!   of the table (adaptive: the threshold follows the embedding's scale).
//!
//! Groups are the connected components of all three kinds of edges (union-find).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::knn::KnnGraph;
use super::vectors::quantile;

/// Which evidence links two samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DuplicateKind {
    Exact,
    ReEncoded,
    Near,
}

impl DuplicateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DuplicateKind::Exact => "exact",
            DuplicateKind::ReEncoded => "re-encoded",
            DuplicateKind::Near => "near",
        }
    }
}

/// One duplicate edge between rows `a < b`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DuplicatePair {
    pub a: usize,
    pub b: usize,
    pub kind: DuplicateKind,
    /// Hamming bits (re-encoded) or embedding distance (near); 0 for exact.
    pub distance: f64,
}

/// Edges between rows whose perceptual hashes differ in at most `max_hamming` bits. Rows with
/// identical hashes are linked to the first row holding that hash (a star, not a clique).
pub fn phash_pairs(hashes: &[u64], max_hamming: u32) -> Vec<DuplicatePair> {
    let mut by_value: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, &h) in hashes.iter().enumerate() {
        by_value.entry(h).or_default().push(i);
    }
    let mut pairs = Vec::new();
    for rows in by_value.values() {
        for &r in &rows[1..] {
            pairs.push(DuplicatePair {
                a: rows[0].min(r),
                b: rows[0].max(r),
                kind: DuplicateKind::ReEncoded,
                distance: 0.0,
            });
        }
    }
    if max_hamming == 0 {
        return pairs;
    }
    // Multi-index hashing over the distinct values.
    let values: Vec<u64> = by_value.keys().copied().collect();
    let bands = (max_hamming as usize + 1).min(64);
    let band_of = |v: u64, b: usize| -> u64 {
        let (lo, hi) = (b * 64 / bands, (b + 1) * 64 / bands);
        let width = hi - lo;
        let mask = if width == 64 {
            u64::MAX
        } else {
            (1u64 << width) - 1
        };
        (v >> lo) & mask
    };
    for b in 0..bands {
        let mut buckets: HashMap<u64, Vec<usize>> = HashMap::new();
        for (vi, &v) in values.iter().enumerate() {
            buckets.entry(band_of(v, b)).or_default().push(vi);
        }
        for bucket in buckets.values().filter(|bk| bk.len() > 1) {
            for (x, &vi) in bucket.iter().enumerate() {
                for &vj in &bucket[x + 1..] {
                    let (u, w) = (values[vi], values[vj]);
                    let d = (u ^ w).count_ones();
                    // Count each pair once: in the first band where it agrees.
                    if d > max_hamming || (0..b).any(|e| band_of(u, e) == band_of(w, e)) {
                        continue;
                    }
                    let (ra, rb) = (by_value[&u][0], by_value[&w][0]);
                    pairs.push(DuplicatePair {
                        a: ra.min(rb),
                        b: ra.max(rb),
                        kind: DuplicateKind::ReEncoded,
                        distance: d as f64,
                    });
                }
            }
        }
    }
    pairs
}

/// The adaptive near-duplicate threshold: `factor ×` median nearest-neighbour distance.
pub fn near_threshold(graph: &KnnGraph, factor: f64) -> Option<f64> {
    let nn: Vec<f32> = (0..graph.len()).filter_map(|i| graph.nearest(i)).collect();
    quantile(&nn, 0.5).map(|m| m * factor)
}

/// Graph edges shorter than `threshold`, each once.
pub fn near_pairs(graph: &KnnGraph, threshold: f64) -> Vec<DuplicatePair> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for i in 0..graph.len() {
        for (j, d) in graph.of(i) {
            if (d as f64) >= threshold {
                break;
            }
            let key = (i.min(j), i.max(j));
            if seen.insert(key) {
                out.push(DuplicatePair {
                    a: key.0,
                    b: key.1,
                    kind: DuplicateKind::Near,
                    distance: d as f64,
                });
            }
        }
    }
    out
}

/// Union-find over row indices.
pub struct Groups {
    parent: Vec<usize>,
}

impl Groups {
    pub fn new(n: usize) -> Self {
        Self {
            parent: (0..n).collect(),
        }
    }

    pub fn find(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    pub fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            // The smaller index represents the group: deterministic whatever the edge order.
            let (lo, hi) = (ra.min(rb), ra.max(rb));
            self.parent[hi] = lo;
        }
    }

    /// Group representative of every row, or `None` for rows without a duplicate.
    pub fn labels(mut self) -> Vec<Option<usize>> {
        let n = self.parent.len();
        let roots: Vec<usize> = (0..n).map(|i| self.find(i)).collect();
        let mut size = vec![0usize; n];
        roots.iter().for_each(|&r| size[r] += 1);
        roots
            .into_iter()
            .map(|r| (size[r] > 1).then_some(r))
            .collect()
    }
}

/// Cross-set duplicate counts and the violations that matter.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LeakageReport {
    /// `"<set a>|<set b>|<kind>"` → edges (sets in sorted order).
    pub counts: BTreeMap<String, usize>,
    /// Eval (or calibration) rows with a duplicate among training or synthetic rows.
    pub leaked_eval: Vec<usize>,
    /// Rows that are in more than one set themselves (exact duplicates across sets).
    pub exact_cross_set: Vec<usize>,
}

/// Sets whose overlap with an evaluation set is leakage.
const TRAINING_SETS: [&str; 2] = ["train", "synthetic"];
const HELD_OUT_SETS: [&str; 3] = ["eval", "calib", "eval_synthetic"];

/// Counts duplicate edges between sets. `sets[i]` lists every set row `i` belongs to (a labelled
/// eval image that validators also sent is in `eval` and `traffic`).
pub fn leakage(pairs: &[DuplicatePair], sets: &[Vec<String>]) -> LeakageReport {
    let mut r = LeakageReport::default();
    let mut leaked = HashSet::new();
    for (i, s) in sets.iter().enumerate() {
        if s.len() > 1 {
            r.exact_cross_set.push(i);
            let mut sorted = s.clone();
            sorted.sort();
            for (x, a) in sorted.iter().enumerate() {
                for b in &sorted[x + 1..] {
                    *r.counts.entry(format!("{a}|{b}|exact")).or_default() += 1;
                }
            }
            let held = s.iter().any(|x| HELD_OUT_SETS.contains(&x.as_str()));
            let trained = s.iter().any(|x| TRAINING_SETS.contains(&x.as_str()));
            if held && trained {
                leaked.insert(i);
            }
        }
    }
    for p in pairs {
        for sa in &sets[p.a] {
            for sb in &sets[p.b] {
                let (x, y) = if sa <= sb { (sa, sb) } else { (sb, sa) };
                *r.counts
                    .entry(format!("{x}|{y}|{}", p.kind.as_str()))
                    .or_default() += 1;
                for (h, t, row) in [(sa, sb, p.a), (sb, sa, p.b)] {
                    if HELD_OUT_SETS.contains(&h.as_str()) && TRAINING_SETS.contains(&t.as_str()) {
                        leaked.insert(row);
                    }
                }
            }
        }
    }
    r.leaked_eval = leaked.into_iter().collect();
    r.leaked_eval.sort_unstable();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phash_search_finds_every_pair_within_the_distance_and_no_other() {
        // Brute force on random-ish hashes with planted near copies.
        let mut hashes: Vec<u64> = (0..200u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ 0x5555)
            .collect();
        hashes.push(hashes[3] ^ 0b101); // 2 bits from row 3
        hashes.push(hashes[7] ^ (1 << 63) ^ (1 << 40) ^ (1 << 20) ^ 1); // 4 bits from row 7
        hashes.push(hashes[9]); // identical to row 9
        for max in [0u32, 2, 4, 6] {
            let got: HashSet<(usize, usize)> = phash_pairs(&hashes, max)
                .into_iter()
                .map(|p| (p.a, p.b))
                .collect();
            let mut want = HashSet::new();
            for i in 0..hashes.len() {
                for j in i + 1..hashes.len() {
                    if (hashes[i] ^ hashes[j]).count_ones() <= max {
                        want.insert((i, j));
                    }
                }
            }
            assert_eq!(got, want, "max_hamming {max}");
        }
    }

    #[test]
    fn groups_and_leakage_across_sets() {
        let pairs = vec![
            DuplicatePair {
                a: 0,
                b: 1,
                kind: DuplicateKind::Near,
                distance: 0.01,
            },
            DuplicatePair {
                a: 1,
                b: 2,
                kind: DuplicateKind::ReEncoded,
                distance: 2.0,
            },
            DuplicatePair {
                a: 3,
                b: 4,
                kind: DuplicateKind::Near,
                distance: 0.02,
            },
        ];
        let mut g = Groups::new(6);
        for p in &pairs {
            g.union(p.a, p.b);
        }
        assert_eq!(
            g.labels(),
            vec![Some(0), Some(0), Some(0), Some(3), Some(3), None]
        );
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let sets = vec![
            s(&["eval"]),
            s(&["train"]),
            s(&["synthetic"]),
            s(&["traffic"]),
            s(&["traffic"]),
            s(&["eval", "traffic"]),
        ];
        let r = leakage(&pairs, &sets);
        assert_eq!(r.leaked_eval, vec![0]);
        assert_eq!(r.exact_cross_set, vec![5]);
        assert_eq!(r.counts["eval|train|near"], 1);
        assert_eq!(r.counts["synthetic|train|re-encoded"], 1);
        assert_eq!(r.counts["traffic|traffic|near"], 1);
        assert_eq!(r.counts["eval|traffic|exact"], 1);
    }
}
