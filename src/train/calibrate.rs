//! Temperature scaling and the served probability.
//!
//! A head trained with class weights and early stopping is rarely calibrated; the validator only
//! rounds at 0.5, but the cascade's thresholds, the mining stage's uncertainty and the EMA of the
//! reward all read the probability itself. One scalar `T` fitted on held-out real data fixes the
//! scale without changing the ranking.

use serde::{Deserialize, Serialize};

/// What calibration found.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Temperature {
    /// Logits are divided by `t` before the sigmoid.
    pub t: f64,
    /// Samples it was fitted on (0 = not fitted, `t` = 1).
    pub fitted_on: u64,
}

impl Default for Temperature {
    fn default() -> Self {
        Self {
            t: 1.0,
            fitted_on: 0,
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
        }
    }

    /// The calibrated probability of a logit, before the serving guards.
    pub fn probability(&self, logit: f32) -> f64 {
        sigmoid(logit as f64 / self.t)
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

    #[test]
    fn recovers_the_temperature_of_an_overconfident_model() {
        // Labels drawn from sigmoid(z/3); the model reports z, i.e. 3× too confident.
        let mut logits = Vec::new();
        let mut labels = Vec::new();
        let mut state = 12345u64;
        for i in 0..20_000 {
            let z = (i as f32 / 20_000.0 - 0.5) * 24.0;
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            labels.push(u8::from(u < sigmoid(z as f64 / 3.0)));
            logits.push(z);
        }
        let t = Temperature::fit(&logits, &labels);
        assert!((t.t - 3.0).abs() < 0.15, "T = {}", t.t);
        assert_eq!(t.fitted_on, 20_000);
    }

    #[test]
    fn served_probability_is_finite_in_range_and_never_one_half() {
        let t = Temperature {
            t: 2.0,
            fitted_on: 1,
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
}
