//! Calibration and the served probability.
//!
//! A head trained with class weights and early stopping is rarely calibrated; the validator only
//! rounds at 0.5, but the cascade's thresholds, the mining stage's uncertainty and the EMA of the
//! reward all read the probability itself. Platt scaling — `sigmoid(z / T + b)`, fitted on
//! held-out real data — fixes the scale (and an offset) without changing the ranking.
//!
//! The calibrated probability is right for the class prior of the data it was fitted on, but
//! validators draw their challenges 50/50 by label. The prior shift (Saerens, Latinne & Decaestecker
//! 2002) moves it to the test prior: with training prior π, the posterior under a prior of ½ has
//! odds `p/(1−p) · (1−π)/π`, i.e. the logit moves by `−logit(π)`. A head that is right about
//! the odds then decides at 0.5 exactly as a validator's MCC and accuracy reward.

use serde::{Deserialize, Serialize};

/// What calibration found.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Temperature {
    /// Logits are divided by `t` before the sigmoid.
    pub t: f64,
    /// Samples it was fitted on (0 = not fitted, `t` = 1).
    pub fitted_on: u64,
    /// Platt offset added to `z / t` (0 for a temperature-only fit and for older cards).
    #[serde(default)]
    pub bias: f64,
    /// The positive share of the data the calibration was fitted on, when the prior was corrected.
    #[serde(default)]
    pub prior: Option<f64>,
    /// Added to the logit to move the prior to ½: `−logit(prior)` (0 without correction).
    #[serde(default)]
    pub prior_shift: f64,
}

impl Default for Temperature {
    fn default() -> Self {
        Self {
            t: 1.0,
            fitted_on: 0,
            bias: 0.0,
            prior: None,
            prior_shift: 0.0,
        }
    }
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Mean binary NLL of `sigmoid(beta · z)`, computed stably as softplus(βz) − yβz.
fn nll(beta: f64, logits: &[f32], labels: &[u8]) -> f64 {
    let mut s = 0.0;
    for (&z, &y) in logits.iter().zip(labels) {
        let a = beta * z as f64;
        let softplus = a.max(0.0) + (-a.abs()).exp().ln_1p();
        s += softplus - y as f64 * a;
    }
    s / logits.len().max(1) as f64
}

impl Temperature {
    /// Fits `T` by minimising the NLL over β = 1/T ∈ [0.01, 100]. The NLL is convex in β (a
    /// one-feature logistic regression without intercept), so a golden-section search on log β
    /// finds the optimum; non-finite logits are ignored.
    pub fn fit(logits: &[f32], labels: &[u8]) -> Self {
        let (z, y): (Vec<f32>, Vec<u8>) = logits
            .iter()
            .zip(labels)
            .filter(|(z, _)| z.is_finite())
            .map(|(z, y)| (*z, *y))
            .unzip();
        if z.is_empty() || !y.contains(&0) || !y.contains(&1) {
            return Self::default();
        }
        let f = |lb: f64| nll(lb.exp(), &z, &y);
        let (mut a, mut b) = (0.01f64.ln(), 100f64.ln());
        let g = (5f64.sqrt() - 1.0) / 2.0;
        let mut c = b - g * (b - a);
        let mut d = a + g * (b - a);
        let (mut fc, mut fd) = (f(c), f(d));
        for _ in 0..80 {
            if fc < fd {
                b = d;
                d = c;
                fd = fc;
                c = b - g * (b - a);
                fc = f(c);
            } else {
                a = c;
                c = d;
                fc = fd;
                d = a + g * (b - a);
                fd = f(d);
            }
        }
        Self {
            t: 1.0 / ((a + b) / 2.0).exp(),
            fitted_on: z.len() as u64,
            ..Self::default()
        }
    }

    /// Fits Platt scaling `sigmoid(a·z + b)` (then `t = 1/a`, `bias = b`) by Newton's method with
    /// a backtracking line search on the NLL, with Platt's smoothed targets
    /// (`(N₊+1)/(N₊+2)` and `1/(N₋+2)`) so that separable data still gives a finite slope. `a`
    /// stays in [0.01, 100] as in [`Temperature::fit`]; non-finite logits are ignored; one class
    /// only leaves the identity.
    pub fn fit_with_bias(logits: &[f32], labels: &[u8]) -> Self {
        let (z, y): (Vec<f64>, Vec<u8>) = logits
            .iter()
            .zip(labels)
            .filter(|(z, _)| z.is_finite())
            .map(|(z, y)| (*z as f64, *y))
            .unzip();
        let pos = y.iter().filter(|&&v| v == 1).count();
        let neg = y.len() - pos;
        if pos == 0 || neg == 0 {
            return Self::default();
        }
        let hi = (pos as f64 + 1.0) / (pos as f64 + 2.0);
        let lo = 1.0 / (neg as f64 + 2.0);
        let target: Vec<f64> = y.iter().map(|&v| if v == 1 { hi } else { lo }).collect();
        let loss = |a: f64, b: f64| -> f64 {
            z.iter()
                .zip(&target)
                .map(|(&z, &t)| {
                    let s = a * z + b;
                    s.max(0.0) + (-s.abs()).exp().ln_1p() - t * s
                })
                .sum::<f64>()
        };
        let (mut a, mut b) = (1.0f64, 0.0f64);
        let mut f = loss(a, b);
        for _ in 0..100 {
            let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for (&z, &t) in z.iter().zip(&target) {
                let p = sigmoid(a * z + b);
                let w = (p * (1.0 - p)).max(1e-12);
                ga += (p - t) * z;
                gb += p - t;
                haa += w * z * z;
                hab += w * z;
                hbb += w;
            }
            // A tiny ridge keeps the 2×2 system solvable when all logits are equal.
            let ridge = 1e-9 * z.len() as f64;
            let (haa, hbb) = (haa + ridge, hbb + ridge);
            let det = haa * hbb - hab * hab;
            if !det.is_finite() || det <= 0.0 {
                break;
            }
            let da = (hbb * ga - hab * gb) / det;
            let db = (haa * gb - hab * ga) / det;
            let mut step = 1.0;
            let mut improved = false;
            while step > 1e-10 {
                let (na, nb) = ((a - step * da).clamp(0.01, 100.0), b - step * db);
                let nf = loss(na, nb);
                if nf.is_finite() && nf <= f {
                    improved = (f - nf) > 1e-12 * f.abs().max(1.0);
                    (a, b, f) = (na, nb, nf);
                    break;
                }
                step /= 2.0;
            }
            if !improved {
                break;
            }
        }
        Self {
            t: 1.0 / a,
            fitted_on: z.len() as u64,
            bias: b,
            ..Self::default()
        }
    }

    /// The same calibration, with its prior `prior` (the positive share of the data it was fitted
    /// on) moved to ½. A prior outside (0, 1) leaves it unchanged.
    pub fn shifted_to_balanced(self, prior: f64) -> Self {
        if !(prior > 0.0 && prior < 1.0) {
            return self;
        }
        Self {
            prior: Some(prior),
            prior_shift: -(prior / (1.0 - prior)).ln(),
            ..self
        }
    }

    /// The calibrated probability of a logit, before the serving guards.
    pub fn probability(&self, logit: f32) -> f64 {
        sigmoid(logit as f64 / self.t + self.bias + self.prior_shift)
    }

    /// The calibrated probability for the data's own prior (without the shift to ½): what a
    /// reliability diagram on that data should compare against.
    pub fn probability_unshifted(&self, logit: f32) -> f64 {
        sigmoid(logit as f64 / self.t + self.bias)
    }

    /// What leaves the server: finite, in [0,1], never exactly 0.5 (the validator's rounding
    /// sends 0.5 to "no roadwork"; an undecided head says so explicitly, just below 0.5). A
    /// non-finite logit — which a finite head on finite features cannot produce — answers just
    /// below 0.5 too rather than leaking NaN.
    pub fn served(&self, logit: f32) -> f32 {
        let p = self.probability(logit);
        let p = if p.is_finite() { p as f32 } else { 0.5 };
        if p == 0.5 {
            UNDECIDED
        } else {
            p.clamp(0.0, 1.0)
        }
    }
}

/// The answer for an undecided head: the largest f32 below 0.5.
pub const UNDECIDED: f32 = 0.499_999_97;

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` logits evenly over `±span/2` with labels drawn from `p(z)` by a fixed LCG.
    fn drawn(n: usize, span: f32, seed: u64, p: impl Fn(f64) -> f64) -> (Vec<f32>, Vec<u8>) {
        let mut state = seed;
        (0..n)
            .map(|i| {
                let z = (i as f32 / n as f32 - 0.5) * span;
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                (z, u8::from(u < p(z as f64)))
            })
            .unzip()
    }

    #[test]
    fn recovers_the_temperature_of_an_overconfident_model() {
        // Labels drawn from sigmoid(z/3); the model reports z, i.e. 3× too confident.
        let (logits, labels) = drawn(20_000, 24.0, 12345, |z| sigmoid(z / 3.0));
        let t = Temperature::fit(&logits, &labels);
        assert!((t.t - 3.0).abs() < 0.15, "T = {}", t.t);
        assert_eq!(t.fitted_on, 20_000);
    }

    #[test]
    fn served_probability_is_finite_in_range_and_never_one_half() {
        let t = Temperature {
            t: 2.0,
            fitted_on: 1,
            ..Default::default()
        };
        for z in [
            0.0f32,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e30,
            -1e30,
            3.0,
        ] {
            let p = t.served(z);
            assert!(
                p.is_finite() && (0.0..=1.0).contains(&p) && p != 0.5,
                "{z} → {p}"
            );
        }
        const { assert!(UNDECIDED < 0.5 && UNDECIDED > 0.4999) };
        assert!(t.served(0.0) < 0.5);
    }

    #[test]
    fn one_class_leaves_the_temperature_at_one() {
        assert_eq!(
            Temperature::fit(&[1.0, 2.0], &[1, 1]),
            Temperature::default()
        );
    }

    #[test]
    fn platt_recovers_slope_and_offset() {
        // Labels drawn from sigmoid(z/2 − 1).
        let (logits, labels) = drawn(40_000, 20.0, 777, |z| sigmoid(z / 2.0 - 1.0));
        let p = Temperature::fit_with_bias(&logits, &labels);
        assert!((p.t - 2.0).abs() < 0.1, "T = {}", p.t);
        assert!((p.bias + 1.0).abs() < 0.1, "b = {}", p.bias);
        // Separable data still gets a finite, bounded slope.
        let s = Temperature::fit_with_bias(&[-3.0, -2.0, 2.0, 3.0], &[0, 0, 1, 1]);
        assert!(s.t.is_finite() && s.t >= 0.01 && s.t <= 100.0, "{s:?}");
        assert_eq!(
            Temperature::fit_with_bias(&[1.0], &[1]),
            Temperature::default()
        );
    }

    #[test]
    fn prior_shift_matches_the_hand_computed_posterior() {
        // Calibrated p = 0.8 on data with 20 % positives: odds 4 · (0.8/0.2) = 16 → 16/17.
        let cal = Temperature::default();
        let z = 4f32.ln();
        assert!((cal.probability(z) - 0.8).abs() < 1e-6);
        let balanced = cal.shifted_to_balanced(0.2);
        assert!((balanced.probability(z) - 16.0 / 17.0).abs() < 1e-6);
        assert_eq!(balanced.prior, Some(0.2));
        assert!((balanced.probability_unshifted(z) - 0.8).abs() < 1e-6);
        // With 80 % positives the same p = 0.8 is exactly the prior: a tie at ½, which the
        // server answers just below ½ (numpy rounds ½ to 0, "no roadwork").
        let tie = cal.shifted_to_balanced(0.8);
        assert!((tie.probability(z) - 0.5).abs() < 1e-6);
        let served = tie.served(z);
        assert!(served < 0.5 && served > 0.4999, "{served}");
        assert_eq!(crate::train::reward::numpy_round(served as f64), 0.0);
        // A degenerate prior changes nothing.
        assert_eq!(cal.shifted_to_balanced(0.0), cal);
        assert_eq!(cal.shifted_to_balanced(f64::NAN), cal);
    }
}
