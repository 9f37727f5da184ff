//! `roadwork bench mine`: kNN graph, k-means and duplicate search at 100k–1M vectors, with peak
//! memory; and the clustered random vectors the mining tests use.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::mine::Vectors;

/// `n` vectors of dimension `dim` around `centres` random centres; row `i` belongs to centre
/// `i % centres` (see [`clustered_centre`]), with uniform noise of ±0.25 per coordinate.
pub fn clustered(n: usize, dim: usize, centres: usize, seed: u64) -> Vectors {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres = centres.max(1);
    let c: Vec<f32> = (0..centres * dim)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let mut x = Vec::with_capacity(n * dim);
    for i in 0..n {
        let k = i % centres;
        x.extend((0..dim).map(|e| c[k * dim + e] + rng.random_range(-0.25f32..0.25)));
    }
    // Finite by construction.
    Vectors::new(x, dim).unwrap_or_else(|_| unreachable!("finite by construction"))
}

/// The centre row `i` of [`clustered`] was drawn around.
pub fn clustered_centre(i: usize, _n: usize, centres: usize) -> usize {
    i % centres.max(1)
}
