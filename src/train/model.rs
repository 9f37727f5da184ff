//! A trained head as an artifact: its weights in safetensors and its model card, and the loaded
//! form that turns features into served probabilities.
//!
//! Weight names (all f32, row-major):
//! - `input.mean`, `input.inv_std`: `[dim]` — the training-set standardisation;
//! - `hidden.{i}.weight`: `[d_in, d_out]`, `hidden.{i}.bias`: `[d_out]`;
//! - `out.weight`: `[d_last, 1]`, `out.bias`: `[1]`.

use std::collections::{BTreeMap, HashMap};

use burn::module::Param;
use burn::prelude::*;
use chrono::{DateTime, Utc};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::TrainError;
use super::calibrate::Temperature;
use super::fit::{EpochLog, logits};
use super::head::{Dense, Head, HeadConfig};
use super::metrics::Metrics;
use super::reward::Replay;

/// Version of the model card layout; a card from a newer layout is refused.
pub const CARD_FORMAT: u32 = 4;

/// Calibration before and after temperature scaling, on the calibration split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CalibrationReport {
    pub temperature: Temperature,
    pub ece_before: f64,
    pub ece_after: f64,
    /// Why calibration was skipped, if it was (too few or one-class calibration samples).
    pub skipped: Option<String>,
}

/// Everything needed to reproduce, trust and serve a head. Immutable once registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub format: u32,
    pub model_version: String,
    pub created_at: DateTime<Utc>,
    /// The embeddings the head reads; serving must compute exactly these.
    pub embedding_model: String,
    pub dim: usize,
    pub head: HeadConfig,
    pub calibration: CalibrationReport,
    /// The snapshot that pins the training data, and the table versions it names.
    pub snapshot: String,
    pub table_versions: BTreeMap<String, u64>,
    /// The mining run whose clusters are this head's evaluation slices (`cluster=N`): the latest
    /// successful one in the snapshot's ledger. The gate reads the same run, so mining again later
    /// never changes how this head is judged. Format 2; absent in format-1 cards.
    #[serde(default)]
    pub slice_run: Option<String>,
    /// The full training configuration.
    pub recipe: serde_json::Value,
    pub seed: u64,
    /// Samples per `split/label`.
    pub data: BTreeMap<String, usize>,
    /// Best epoch of each fold; the final head trains for their median.
    pub fold_best_epochs: Vec<usize>,
    pub final_epochs: usize,
    /// Loss curves: the final head, then each fold.
    pub history: Vec<EpochLog>,
    pub fold_histories: Vec<Vec<EpochLog>>,
    /// Calibrated metrics on the eval split of the training snapshot.
    pub metrics: Option<Metrics>,
    /// The same on the held-out synthetic images (`eval_synthetic`), never mixed into `metrics`.
    /// Format 3.
    #[serde(default)]
    pub metrics_synthetic: Option<Metrics>,
    /// The head on the validator-augmented copies of the eval set (levels 0–3, per distortion),
    /// with the copies it trained on. Format 4.
    #[serde(default)]
    pub metrics_augmented: Option<super::eval::AugmentedEval>,
    pub replay: Option<Replay>,
    /// sha256 of `head.safetensors`.
    pub weights_sha256: String,
    /// The champion when this head was trained.
    pub parent: Option<String>,
    pub roadwork_version: String,
}

impl ModelCard {
    /// The card of a head nobody trained (benchmarks and smoke tests of the serving path): no
    /// data, no metrics, identity calibration, recipe `null`.
    pub fn untrained(
        version: &str,
        embedding_model: &str,
        dim: usize,
        head: HeadConfig,
        weights: &[u8],
    ) -> Self {
        Self {
            format: CARD_FORMAT,
            model_version: version.into(),
            created_at: Utc::now(),
            embedding_model: embedding_model.into(),
            dim,
            head,
            calibration: Default::default(),
            snapshot: String::new(),
            table_versions: Default::default(),
            slice_run: None,
            recipe: serde_json::Value::Null,
            seed: 0,
            data: Default::default(),
            fold_best_epochs: vec![],
            final_epochs: 0,
            history: vec![],
            fold_histories: vec![],
            metrics: None,
            metrics_synthetic: None,
            metrics_augmented: None,
            replay: None,
            weights_sha256: sha256_hex(weights),
            parent: None,
            roadwork_version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn values<B: Backend, const D: usize>(t: &Param<Tensor<B, D>>) -> (Vec<f32>, Vec<usize>) {
    let v = t.val();
    let dims = v.dims().to_vec();
    (v.into_data().iter::<f32>().collect(), dims)
}

/// Every tensor of a head with its name and shape, in file order.
fn named_tensors<B: Backend>(head: &Head<B>) -> Vec<(String, Vec<f32>, Vec<usize>)> {
    let (m, ms) = values(&head.mean);
    let (s, ss) = values(&head.inv_std);
    let mut tensors = vec![
        ("input.mean".to_string(), m, ms),
        ("input.inv_std".to_string(), s, ss),
    ];
    let layers = head
        .hidden
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("hidden.{i}"), l))
        .chain(std::iter::once(("out".to_string(), &head.out)));
    for (name, l) in layers {
        let (w, ws) = values(&l.weight);
        let (b, bs) = values(&l.bias);
        tensors.push((format!("{name}.weight"), w, ws));
        tensors.push((format!("{name}.bias"), b, bs));
    }
    tensors
}

/// All parameters of a head as one vector (comparisons, determinism checks).
pub fn head_values<B: Backend>(head: &Head<B>) -> Vec<f32> {
    named_tensors(head)
        .into_iter()
        .flat_map(|(_, v, _)| v)
        .collect()
}

/// Serialises a head's weights (see the module docs for names and shapes).
pub fn encode_head<B: Backend>(head: &Head<B>) -> Result<Vec<u8>, TrainError> {
    let tensors = named_tensors(head);
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .into_iter()
        .map(|(n, v, s)| (n, f32_bytes(&v), s))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, b, s)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| TrainError::Weights(e.to_string()))?;
    let meta = HashMap::from([("format".to_string(), "roadwork-head-v1".to_string())]);
    safetensors::serialize(views, Some(meta)).map_err(|e| TrainError::Weights(e.to_string()))
}

/// Rebuilds a head from [`encode_head`] bytes; every tensor must be present with the card's shape.
pub fn decode_head<B: Backend>(
    bytes: &[u8],
    cfg: &HeadConfig,
    dim: usize,
    device: &B::Device,
) -> Result<Head<B>, TrainError> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| TrainError::Weights(e.to_string()))?;
    let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>, TrainError> {
        let t = st
            .tensor(name)
            .map_err(|_| TrainError::Weights(format!("tensor {name} is missing")))?;
        if t.dtype() != Dtype::F32 || t.shape() != shape {
            return Err(TrainError::Weights(format!(
                "tensor {name} is {:?} {:?}, expected F32 {shape:?}",
                t.dtype(),
                t.shape()
            )));
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    let vec1 =
        |v: Vec<f32>| Param::from_tensor(Tensor::from_data(TensorData::new(v, [dim]), device));
    let mean = vec1(get("input.mean", &[dim])?).set_require_grad(false);
    let inv_std = vec1(get("input.inv_std", &[dim])?).set_require_grad(false);
    let mut d_in = dim;
    let mut hidden = Vec::new();
    for (i, &w) in cfg.hidden.iter().enumerate() {
        let weight = get(&format!("hidden.{i}.weight"), &[d_in, w])?;
        let bias = get(&format!("hidden.{i}.bias"), &[w])?;
        hidden.push(Dense::from_values(&weight, &bias, d_in, w, device));
        d_in = w;
    }
    let weight = get("out.weight", &[d_in, 1])?;
    let bias = get("out.bias", &[1])?;
    Ok(Head {
        mean,
        inv_std,
        hidden,
        out: Dense::from_values(&weight, &bias, d_in, 1, device),
    })
}

/// Hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A registered head, loaded for inference.
pub struct TrainedHead<B: Backend> {
    pub card: ModelCard,
    head: Head<B>,
    device: B::Device,
}

impl<B: Backend> TrainedHead<B> {
    /// Loads weights that must hash to the card's `weights_sha256`.
    pub fn from_parts(
        card: ModelCard,
        weights: &[u8],
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        let got = sha256_hex(weights);
        if got != card.weights_sha256 {
            return Err(TrainError::Corrupt {
                version: card.model_version.clone(),
                why: format!(
                    "weights sha256 {got} does not match the card's {}",
                    card.weights_sha256
                ),
            });
        }
        let head = decode_head(weights, &card.head, card.dim, device)?;
        Ok(Self {
            card,
            head,
            device: device.clone(),
        })
    }

    /// Raw logits of row-major features (`n × dim`).
    pub fn logits(&self, x: &[f32]) -> Result<Vec<f32>, TrainError> {
        if self.card.dim == 0 || !x.len().is_multiple_of(self.card.dim) {
            return Err(TrainError::DimMismatch {
                expected: self.card.dim,
                got: x.len(),
            });
        }
        Ok(logits(&self.head, x, self.card.dim, &self.device))
    }

    /// Served probabilities: calibrated, finite, in [0,1], never exactly 0.5.
    pub fn predict(&self, x: &[f32]) -> Result<Vec<f32>, TrainError> {
        let t = self.card.calibration.temperature;
        Ok(self.logits(x)?.into_iter().map(|z| t.served(z)).collect())
    }
}
