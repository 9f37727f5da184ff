//! Fitting one head: class-weighted binary cross-entropy, AdamW with linear warm-up and cosine decay,
//! early stopping on validation MCC. Generic over the Burn autodiff backend (ndarray on CPU, CUDA
//! with the `cuda` feature).

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::head::{DropoutMasks, Head, HeadConfig, feature_stats};
use super::metrics::{Confusion, decide};

/// The optimisation recipe (`[train]` fields that shape one fit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FitConfig {
    /// Upper bound on epochs (early stopping usually ends sooner).
    pub max_epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate of AdamW.
    pub learning_rate: f64,
    /// Decoupled weight decay of AdamW.
    pub weight_decay: f64,
    /// Share of all steps spent warming the learning rate up linearly from 0.
    pub warmup_share: f64,
    /// Epochs without a better validation MCC before stopping.
    pub patience: usize,
    /// Weigh each class by n / (2 · n_class), so a skewed label mix does not buy accuracy by
    /// predicting the majority.
    pub balance_classes: bool,
}

impl Default for FitConfig {
    fn default() -> Self {
        Self {
            max_epochs: 60,
            batch_size: 256,
            learning_rate: 1e-3,
            weight_decay: 1e-2,
            warmup_share: 0.05,
            patience: 8,
            balance_classes: true,
        }
    }
}

/// Row-major features with their 0/1 labels.
#[derive(Debug, Clone, Copy)]
pub struct Xy<'a> {
    pub x: &'a [f32],
    pub y: &'a [u8],
    pub dim: usize,
}

impl Xy<'_> {
    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
}

/// One epoch of the loss curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    pub val_mcc: Option<f64>,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
}

/// A fitted head and how it got there.
pub struct Fitted<B: Backend> {
    pub head: Head<B>,
    /// The epoch whose weights were kept (1-based).
    pub best_epoch: usize,
    pub history: Vec<EpochLog>,
}

/// Learning rate at `step` of `total`: linear warm-up to `peak`, then cosine decay to 0.
pub fn lr_at(step: usize, total: usize, warmup: usize, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = (total - warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    0.5 * peak * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Mean class-weighted BCE on logits, stable for any logit: max(z,0) − z·y + ln(1 + e^−|z|).
fn weighted_bce<B: Backend>(
    logits: Tensor<B, 1>,
    y: Tensor<B, 1>,
    w: Tensor<B, 1>,
) -> Tensor<B, 1> {
    let per = logits.clone().clamp_min(0.0) - logits.clone() * y + logits.abs().neg().exp().log1p();
    (per * w).mean()
}

fn to_device<B: Backend>(
    data: Xy<'_>,
    rows: &[usize],
    device: &B::Device,
) -> (Tensor<B, 2>, Vec<f32>) {
    let mut x = Vec::with_capacity(rows.len() * data.dim);
    let mut y = Vec::with_capacity(rows.len());
    for &r in rows {
        x.extend_from_slice(&data.x[r * data.dim..(r + 1) * data.dim]);
        y.push(data.y[r] as f32);
    }
    (
        Tensor::from_data(TensorData::new(x, [rows.len(), data.dim]), device),
        y,
    )
}

/// Logits of `head` for every row of `x` (`n × dim`), in chunks to bound memory.
pub fn logits<B: Backend>(head: &Head<B>, x: &[f32], dim: usize, device: &B::Device) -> Vec<f32> {
    const CHUNK: usize = 8192;
    let mut out = Vec::with_capacity(x.len() / dim.max(1));
    for chunk in x.chunks(CHUNK * dim) {
        let n = chunk.len() / dim;
        let t = Tensor::<B, 2>::from_data(TensorData::new(chunk.to_vec(), [n, dim]), device);
        let z = head.forward(t, None).into_data();
        out.extend(z.iter::<f32>());
    }
    out
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Validation loss (unweighted BCE) and MCC at 0.5.
fn validate(z: &[f32], y: &[u8]) -> (f64, f64) {
    let mut loss = 0.0;
    for (&z, &y) in z.iter().zip(y) {
        let z = z as f64;
        loss += z.max(0.0) - z * y as f64 + (-z.abs()).exp().ln_1p();
    }
    let mcc = Confusion::of(z.iter().map(|&z| decide(sigmoid(z))), y).mcc();
    (loss / z.len().max(1) as f64, mcc)
}

/// Trains one head on `train`. With `val`, keeps the weights of the epoch with the best validation
/// MCC (ties: lower validation loss) and stops after `patience` epochs without improvement;
/// without it, trains exactly `epochs` epochs (the final head, after K-fold chose the length).
pub fn fit<B: AutodiffBackend>(
    head_cfg: &HeadConfig,
    cfg: &FitConfig,
    train: Xy<'_>,
    val: Option<Xy<'_>>,
    epochs: usize,
    seed: u64,
    device: &B::Device,
) -> Fitted<B::InnerBackend> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mean, std) = feature_stats(train.x, train.dim);
    let mut head: Head<B> = Head::init(head_cfg, &mean, &std, &mut rng, device);
    let mut optim = AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay as f32)
        .init::<B, Head<B>>();

    let n = train.len();
    let pos = train.y.iter().filter(|&&y| y == 1).count().max(1) as f32;
    let neg = (n as f32 - pos).max(1.0);
    let (w_pos, w_neg) = if cfg.balance_classes {
        (n as f32 / (2.0 * pos), n as f32 / (2.0 * neg))
    } else {
        (1.0, 1.0)
    };
    let batch = cfg.batch_size.clamp(1, n.max(1));
    let steps_per_epoch = n.div_ceil(batch);
    let total = steps_per_epoch * epochs.max(1);
    let warmup = ((cfg.warmup_share * total as f64).ceil() as usize).clamp(1, total);

    let mut order: Vec<usize> = (0..n).collect();
    let mut history = Vec::new();
    let mut best: Option<(f64, f64, usize, Head<B::InnerBackend>)> = None;
    let mut step = 0;
    for epoch in 1..=epochs.max(1) {
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        let mut lr = 0.0;
        for rows in order.chunks(batch) {
            let (x, y) = to_device::<B>(train, rows, device);
            let w: Vec<f32> = y
                .iter()
                .map(|&y| if y > 0.5 { w_pos } else { w_neg })
                .collect();
            let y = Tensor::<B, 1>::from_data(TensorData::new(y, [rows.len()]), device);
            let w = Tensor::<B, 1>::from_data(TensorData::new(w, [rows.len()]), device);
            let masks = DropoutMasks::draw(head_cfg, rows.len(), &mut rng, device);
            let loss = weighted_bce(head.forward(x, masks.as_ref()), y, w);
            loss_sum += loss.clone().into_scalar().elem::<f64>() * rows.len() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &head);
            lr = lr_at(step, total, warmup, cfg.learning_rate);
            head = optim.step(lr, head, grads);
            step += 1;
        }
        let train_loss = loss_sum / n.max(1) as f64;
        let Some(val) = val else {
            history.push(EpochLog {
                epoch,
                train_loss,
                val_loss: None,
                val_mcc: None,
                lr,
            });
            continue;
        };
        let inner = head.valid();
        let z = logits(&inner, val.x, val.dim, device);
        let (val_loss, val_mcc) = validate(&z, val.y);
        history.push(EpochLog {
            epoch,
            train_loss,
            val_loss: Some(val_loss),
            val_mcc: Some(val_mcc),
            lr,
        });
        let better = best.as_ref().is_none_or(|(m, l, _, _)| {
            val_mcc > *m + 1e-12 || ((val_mcc - *m).abs() <= 1e-12 && val_loss < *l)
        });
        if better {
            best = Some((val_mcc, val_loss, epoch, inner));
        } else if best
            .as_ref()
            .is_some_and(|(_, _, e, _)| epoch - e >= cfg.patience)
        {
            break;
        }
    }
    match best {
        Some((_, _, best_epoch, head)) => Fitted {
            head,
            best_epoch,
            history,
        },
        None => Fitted {
            best_epoch: history.len(),
            head: head.valid(),
            history,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let peak = 1e-3;
        assert!((lr_at(0, 100, 10, peak) - 1e-4).abs() < 1e-12);
        assert!((lr_at(9, 100, 10, peak) - peak).abs() < 1e-12);
        assert!((lr_at(10, 100, 10, peak) - peak).abs() < 1e-12);
        assert!((lr_at(55, 100, 10, peak) - peak / 2.0).abs() < 1e-9);
        assert!(lr_at(100, 100, 10, peak) < 1e-12);
        let mut last = f64::MAX;
        for s in 10..100 {
            let lr = lr_at(s, 100, 10, peak);
            assert!(lr <= last);
            last = lr;
        }
    }
}
