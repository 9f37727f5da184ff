//! Deterministic synthetic data shared by unit tests, integration tests and benchmarks: clustered
//! random vectors (with or without labels) and the committed UCI digits. One place, so that tests
//! and `roadwork bench` measure the same distributions and no library module imports `bench`.
//! Plain rows only (`Vec<f32>`, row-major): this module depends on no stage, so no stage's tests
//! make a cycle through it.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` vectors of dimension `dim` around `centres` random centres; row `i` belongs to centre
/// `i % centres` (see [`clustered_centre`]), with uniform noise of ±0.25 per coordinate.
pub fn clustered(n: usize, dim: usize, centres: usize, seed: u64) -> Vec<f32> {
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
    x
}

/// The centre row `i` of [`clustered`] was drawn around.
pub fn clustered_centre(i: usize, _n: usize, centres: usize) -> usize {
    i % centres.max(1)
}

/// `n` vectors around `centres` random centres; the label is a fixed function of the centre with
/// 10 % flipped, so the head has something to learn and cannot reach 100 %.
pub fn labelled_clusters(n: usize, dim: usize, centres: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..centres.max(1))
        .map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let mut x = Vec::with_capacity(n * dim);
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        let c = rng.random_range(0..centres.len());
        x.extend(
            centres[c]
                .iter()
                .map(|v| v + rng.random_range(-0.5f32..0.5)),
        );
        let label = (c % 2) as u8;
        y.push(if rng.random_bool(0.1) {
            1 - label
        } else {
            label
        });
    }
    (x, y)
}

/// Pixels per digit (8 × 8).
pub const DIGITS_DIM: usize = 64;

/// The labelled digits: `x` is row-major `len × 64`, scaled to [0, 1].
pub struct Digits {
    pub x: Vec<f32>,
    pub y: Vec<usize>,
}

/// Reads `digits.csv` (`label,p0..p63`); pixels are scaled to [0, 1].
pub fn load_digits(path: &Path) -> Result<Digits, std::io::Error> {
    let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    let text = std::fs::read_to_string(path)?;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate().skip(1) {
        let mut f = line.split(',');
        let label = f
            .next()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&l| l < 10)
            .ok_or_else(|| bad(format!("{}:{}: bad label", path.display(), n + 1)))?;
        let px: Vec<f32> = f.filter_map(|v| v.trim().parse::<f32>().ok()).collect();
        if px.len() != 64 {
            return Err(bad(format!(
                "{}:{}: {} pixels, expected 64",
                path.display(),
                n + 1,
                px.len()
            )));
        }
        x.extend(px.iter().map(|v| v / 16.0));
        y.push(label);
    }
    Ok(Digits { x, y })
}
