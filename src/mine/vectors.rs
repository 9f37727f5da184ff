//! The in-memory matrix every mining algorithm works on: one row per sample, row-major `f32`.
//!
//! Mining reads a whole embeddings table once (1M × 384 floats is 1.5 GB) and never builds an
//! `n × n` matrix; every algorithm here streams blocks of rows through a GEMM instead.

use super::MineError;

/// How two vectors are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// `1 − cos(a, b)`, in [0, 2]; rows are L2-normalised once. The metric of the Lance index and
    /// of DINOv3 features.
    #[default]
    Cosine,
    /// `‖a − b‖₂` on the rows as given (k-means, raw pixel features).
    Euclidean,
}

/// `n` vectors of dimension `dim`, row-major.
#[derive(Debug, Clone)]
pub struct Vectors {
    dim: usize,
    data: Vec<f32>,
}

impl Vectors {
    /// Checks the shape and that every value is finite (NaN or ±Inf would poison every distance
    /// they touch, so they are refused here rather than found as "outliers" later).
    pub fn new(data: Vec<f32>, dim: usize) -> Result<Self, MineError> {
        if dim == 0 || !data.len().is_multiple_of(dim) {
            return Err(MineError::Shape(format!(
                "{} values do not form rows of dimension {dim}",
                data.len()
            )));
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(MineError::NonFinite {
                row: i / dim,
                index: i % dim,
            });
        }
        Ok(Self { dim, data })
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The whole matrix, row-major.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The listed rows, in order, as a new matrix.
    pub fn gather(&self, rows: &[usize]) -> Vectors {
        use rayon::prelude::*;
        let d = self.dim;
        let mut data = vec![0f32; rows.len() * d];
        // Large gathers (a k-means pass re-reads most of the matrix) are memory-bound: split them.
        let per_task = (1 << 16) / d.max(1) + 1;
        data.par_chunks_mut(per_task * d)
            .zip(rows.par_chunks(per_task))
            .for_each(|(out, idx)| {
                for (o, &r) in out.chunks_exact_mut(d).zip(idx) {
                    o.copy_from_slice(self.row(r));
                }
            });
        Vectors {
            dim: self.dim,
            data,
        }
    }

    /// Rows `start..end` copied into a contiguous buffer.
    pub fn block(&self, start: usize, end: usize) -> &[f32] {
        &self.data[start * self.dim..end * self.dim]
    }

    /// Unit-length rows (a zero row stays zero), so cosine similarity is a dot product.
    pub fn normalized(&self) -> Vectors {
        let mut data = self.data.clone();
        for row in data.chunks_mut(self.dim) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm > 0.0 {
                row.iter_mut().for_each(|v| *v /= norm);
            }
        }
        Vectors {
            dim: self.dim,
            data,
        }
    }

    /// The rows as `metric` compares them: normalised for cosine, unchanged for Euclidean.
    pub fn for_metric(&self, metric: Metric) -> Vectors {
        match metric {
            Metric::Cosine => self.normalized(),
            Metric::Euclidean => self.clone(),
        }
    }

    /// Squared L2 norm of every row.
    pub fn sq_norms(&self) -> Vec<f32> {
        self.data
            .chunks(self.dim)
            .map(|r| r.iter().map(|v| v * v).sum())
            .collect()
    }
}

/// Turns a dot product / squared norms into the metric's distance, clamped at 0 against rounding.
pub fn distance_from_dot(metric: Metric, dot: f32, sq_a: f32, sq_b: f32) -> f32 {
    match metric {
        Metric::Cosine => (1.0 - dot).max(0.0),
        Metric::Euclidean => (sq_a + sq_b - 2.0 * dot).max(0.0).sqrt(),
    }
}

/// The value at quantile `q` (linear interpolation, as numpy's default) of unsorted data.
pub fn quantile<T: Copy + Into<f64>>(values: &[T], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.iter().map(|&x| x.into()).collect();
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_ragged_and_non_finite_rows() {
        assert!(matches!(
            Vectors::new(vec![1.0; 5], 2),
            Err(MineError::Shape(_))
        ));
        assert!(matches!(
            Vectors::new(vec![1.0, 2.0, f32::NAN, 0.0], 2),
            Err(MineError::NonFinite { row: 1, index: 0 })
        ));
        assert!(matches!(
            Vectors::new(vec![f32::INFINITY], 1),
            Err(MineError::NonFinite { row: 0, index: 0 })
        ));
    }

    #[test]
    fn normalises_rows_and_keeps_zero_rows() {
        let v = Vectors::new(vec![3.0, 4.0, 0.0, 0.0], 2)
            .unwrap()
            .normalized();
        assert!((v.row(0)[0] - 0.6).abs() < 1e-6 && (v.row(0)[1] - 0.8).abs() < 1e-6);
        assert_eq!(v.row(1), &[0.0, 0.0]);
    }

    #[test]
    fn quantile_interpolates_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.25), Some(1.75));
        assert_eq!(quantile(&v, 0.5), Some(2.5));
        assert_eq!(quantile::<f32>(&[], 0.5), None);
    }
}
