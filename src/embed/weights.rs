//! Weights: reading safetensors (f32, bf16 or f16 stored; cast to f32 on load), mapping the three
//! naming schemes to one, and building a [`DinoV3`] from them.
//!
//! Key maps (every remap is listed here and nowhere else):
//! - transformers 5 saves `model.<key>`: the prefix is stripped.
//! - Hugging Face Hub names are canonical: `embeddings.{cls_token, mask_token, register_tokens}`,
//!   `embeddings.patch_embeddings.{weight,bias}`, `layer.{i}.norm{1,2}.{weight,bias}`,
//!   `layer.{i}.attention.{q,k,v,o}_proj.{weight,bias}`, `layer.{i}.layer_scale{1,2}.lambda1`,
//!   `layer.{i}.mlp.{up,down,gate}_proj.{weight,bias}`, `norm.{weight,bias}`.
//! - Meta's original checkpoints: `cls_token`, `storage_tokens` → `register_tokens`, `mask_token`,
//!   `patch_embed.proj` → `patch_embeddings`, `blocks.{i}` → `layer.{i}`, fused `attn.qkv` split in
//!   three (its k bias is dropped: DINOv3 has none), `attn.proj` → `o_proj`, `ls{1,2}.gamma` →
//!   `layer_scale{1,2}.lambda1`, `mlp.fc1/fc2` → `up/down_proj`, SwiGLU `mlp.w1/w2/w3` →
//!   `gate/up/down_proj`. Buffers that are recomputed (`rope_embed.periods`, `*.bias_mask`) are ignored.
//!
//! PyTorch linear weights are `[out, in]`; Burn's are `[in, out]`: every linear weight is transposed.
//! The patch convolution `[hidden, C, P, P]` becomes a linear `[C·P·P, hidden]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{LayerNorm, Linear};
use burn::prelude::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use sha2::{Digest, Sha256};

use super::vit::{DinoV3, DinoV3Config};

/// Why weights cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read weights {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// User input: not a safetensors file.
    #[error("{path} is not a safetensors file: {detail}")]
    Format { path: PathBuf, detail: String },
    /// User input: a tensor in a dtype we do not read.
    #[error("{path}: tensor {name} has dtype {dtype}; expected F32, BF16, F16 or F64")]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    /// User input: the file does not fit the architecture. Lists every problem at once.
    #[error(
        "weights {source_name} do not fit the model:{}{}{}",
        list("missing", missing),
        list("unexpected", unexpected),
        list("wrong shape", misshaped)
    )]
    Mismatch {
        source_name: String,
        missing: Vec<String>,
        unexpected: Vec<String>,
        misshaped: Vec<String>,
    },
}

fn list(what: &str, items: &[String]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = items.iter().take(20).map(String::as_str).collect();
    let more = if items.len() > 20 {
        format!(" … and {} more", items.len() - 20)
    } else {
        String::new()
    };
    format!("\n  {what} ({}): {}{more}", items.len(), shown.join(", "))
}

/// Named f32 tensors in canonical (Hub) naming, as read from a file or made at random.
#[derive(Debug, Clone, Default)]
pub struct TensorMap {
    /// Where the tensors came from, for error messages and model ids.
    pub source_name: String,
    /// Content hash: sha256 of the file, or of the generator description for random weights.
    pub sha256: String,
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

fn to_f32(dtype: safetensors::Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    use safetensors::Dtype;
    let chunks = |n: usize| bytes.chunks_exact(n);
    Some(match dtype {
        Dtype::F32 => chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => chunks(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        Dtype::BF16 => chunks(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F16 => chunks(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// Canonical name for a stored key; `None` for buffers that are recomputed, not loaded.
/// A fused Meta `qkv` maps to the pseudo-name `….attention.qkv_proj.*`, split later.
fn canonical(key: &str) -> Option<String> {
    let key = key.strip_prefix("model.").unwrap_or(key);
    if key.starts_with("rope_embed.") || key.ends_with(".bias_mask") {
        return None;
    }
    let direct = match key {
        "cls_token" => Some("embeddings.cls_token"),
        "mask_token" => Some("embeddings.mask_token"),
        "storage_tokens" | "register_tokens" => Some("embeddings.register_tokens"),
        "patch_embed.proj.weight" => Some("embeddings.patch_embeddings.weight"),
        "patch_embed.proj.bias" => Some("embeddings.patch_embeddings.bias"),
        _ => None,
    };
    if let Some(d) = direct {
        return Some(d.to_string());
    }
    let Some(rest) = key.strip_prefix("blocks.") else {
        return Some(key.to_string());
    };
    let (i, tail) = rest.split_once('.')?;
    let tail = match tail {
        "attn.qkv.weight" => "attention.qkv_proj.weight",
        "attn.qkv.bias" => "attention.qkv_proj.bias",
        "attn.proj.weight" => "attention.o_proj.weight",
        "attn.proj.bias" => "attention.o_proj.bias",
        "ls1.gamma" => "layer_scale1.lambda1",
        "ls2.gamma" => "layer_scale2.lambda1",
        "mlp.fc1.weight" => "mlp.up_proj.weight",
        "mlp.fc1.bias" => "mlp.up_proj.bias",
        "mlp.fc2.weight" => "mlp.down_proj.weight",
        "mlp.fc2.bias" => "mlp.down_proj.bias",
        "mlp.w1.weight" => "mlp.gate_proj.weight",
        "mlp.w1.bias" => "mlp.gate_proj.bias",
        "mlp.w2.weight" => "mlp.up_proj.weight",
        "mlp.w2.bias" => "mlp.up_proj.bias",
        "mlp.w3.weight" => "mlp.down_proj.weight",
        "mlp.w3.bias" => "mlp.down_proj.bias",
        other => other, // norm1/norm2 keep their names
    };
    Some(format!("layer.{i}.{tail}"))
}

/// Splits fused `qkv_proj` tensors into q/k/v (dropping the k bias).
fn split_fused_qkv(map: &mut BTreeMap<String, (Vec<usize>, Vec<f32>)>) {
    let fused: Vec<String> = map
        .keys()
        .filter(|k| k.contains(".attention.qkv_proj."))
        .cloned()
        .collect();
    for key in fused {
        let Some((shape, data)) = map.remove(&key) else {
            continue;
        };
        let part = data.len() / 3;
        let is_bias = key.ends_with(".bias");
        let sub_shape: Vec<usize> = if is_bias {
            vec![shape[0] / 3]
        } else {
            vec![shape[0] / 3, shape.get(1).copied().unwrap_or(0)]
        };
        for (n, name) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
            if is_bias && *name == "k_proj" {
                continue;
            }
            let new_key = key.replace("qkv_proj", name);
            map.insert(
                new_key,
                (sub_shape.clone(), data[n * part..(n + 1) * part].to_vec()),
            );
        }
    }
}

/// Reads a safetensors file (memory-mapped) into canonical names, hashing its bytes.
pub fn read_safetensors(path: &Path) -> Result<TensorMap, WeightsError> {
    let io = |source| WeightsError::Io {
        path: path.into(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the mapping is read-only and lives only inside this function; a file changed
    // underneath us can at worst produce wrong numbers, which the shape checks and the hash expose.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    let sha256 = hex::encode(Sha256::digest(&mmap[..]));
    let st = safetensors::SafeTensors::deserialize(&mmap).map_err(|e| WeightsError::Format {
        path: path.into(),
        detail: e.to_string(),
    })?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.iter() {
        let Some(canon) = canonical(name) else {
            continue;
        };
        let data = to_f32(view.dtype(), view.data()).ok_or_else(|| WeightsError::Dtype {
            path: path.into(),
            name: name.to_string(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        tensors.insert(canon, (view.shape().to_vec(), data));
    }
    split_fused_qkv(&mut tensors);
    Ok(TensorMap {
        source_name: path.display().to_string(),
        sha256,
        tensors,
    })
}

/// Every tensor the architecture needs, with its PyTorch shape.
pub fn expected_tensors(c: &DinoV3Config) -> BTreeMap<String, Vec<usize>> {
    let (d, i, p, ch) = (
        c.hidden_size,
        c.intermediate_size,
        c.patch_size,
        c.num_channels,
    );
    let mut m = BTreeMap::new();
    m.insert("embeddings.cls_token".into(), vec![1, 1, d]);
    m.insert("embeddings.mask_token".into(), vec![1, 1, d]);
    m.insert(
        "embeddings.register_tokens".into(),
        vec![1, c.num_register_tokens, d],
    );
    m.insert(
        "embeddings.patch_embeddings.weight".into(),
        vec![d, ch, p, p],
    );
    m.insert("embeddings.patch_embeddings.bias".into(), vec![d]);
    for l in 0..c.num_hidden_layers {
        let mut put = |k: &str, s: Vec<usize>| {
            m.insert(format!("layer.{l}.{k}"), s);
        };
        for n in ["norm1", "norm2"] {
            put(&format!("{n}.weight"), vec![d]);
            put(&format!("{n}.bias"), vec![d]);
        }
        for (proj, bias) in [
            ("q_proj", c.query_bias),
            ("k_proj", c.key_bias),
            ("v_proj", c.value_bias),
            ("o_proj", c.proj_bias),
        ] {
            put(&format!("attention.{proj}.weight"), vec![d, d]);
            if bias {
                put(&format!("attention.{proj}.bias"), vec![d]);
            }
        }
        put("layer_scale1.lambda1", vec![d]);
        put("layer_scale2.lambda1", vec![d]);
        let mut mlp = vec![("up_proj", i, d), ("down_proj", d, i)];
        if c.use_gated_mlp {
            mlp.push(("gate_proj", i, d));
        }
        for (name, out, inp) in mlp {
            put(&format!("mlp.{name}.weight"), vec![out, inp]);
            if c.mlp_bias {
                put(&format!("mlp.{name}.bias"), vec![out]);
            }
        }
    }
    m.insert("norm.weight".into(), vec![d]);
    m.insert("norm.bias".into(), vec![d]);
    m
}

/// Weights drawn from N(0, 0.02²) (biases, tokens) with unit norms and LayerScale, deterministic for
/// `seed`. For tests and the demo: the model runs, its features mean nothing.
pub fn random_weights(c: &DinoV3Config, seed: u64) -> TensorMap {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tensors = BTreeMap::new();
    for (name, shape) in expected_tensors(c) {
        let n: usize = shape.iter().product();
        let unit = (name.contains("norm") && name.ends_with(".weight")) || name.contains("lambda1");
        let data: Vec<f32> = if unit {
            vec![1.0; n]
        } else {
            // Sum of uniforms ≈ normal, scaled to σ = 0.02.
            (0..n)
                .map(|_| {
                    let u: f32 = (0..4).map(|_| rng.random::<f32>() - 0.5).sum();
                    u * 0.02 * (3.0f32).sqrt()
                })
                .collect()
        };
        tensors.insert(name, (shape, data));
    }
    let desc = format!("random:{c:?}:seed={seed}");
    TensorMap {
        source_name: format!("random weights (seed {seed})"),
        sha256: hex::encode(Sha256::digest(desc.as_bytes())),
        tensors,
    }
}

/// Takes tensors out of a map, remembering what was missing or mis-shaped.
struct Taker<'a, B: Backend> {
    map: &'a TensorMap,
    expected: BTreeMap<String, Vec<usize>>,
    used: Vec<String>,
    missing: Vec<String>,
    misshaped: Vec<String>,
    device: &'a B::Device,
}

impl<B: Backend> Taker<'_, B> {
    /// The tensor as stored, reshaped to `shape` (the element count must match the expected one).
    fn raw<const D: usize>(&mut self, key: &str, shape: [usize; D]) -> Option<Tensor<B, D>> {
        let want = self.expected.get(key).cloned().unwrap_or_default();
        let Some((have, data)) = self.map.tensors.get(key) else {
            self.missing.push(key.to_string());
            return None;
        };
        self.used.push(key.to_string());
        let same_count = have.iter().product::<usize>() == want.iter().product::<usize>();
        // Meta stores mask_token as [1, d]: same elements, fewer dims. Anything else must match.
        if !(have == &want || (same_count && key.ends_with("mask_token"))) {
            self.misshaped
                .push(format!("{key} is {have:?}, expected {want:?}"));
            return None;
        }
        Some(Tensor::from_data(
            TensorData::new(data.clone(), shape),
            self.device,
        ))
    }

    fn linear(&mut self, prefix: &str, target: &mut Linear<B>) {
        let [d_in, d_out] = target.weight.dims();
        if let Some(w) = self.raw::<2>(&format!("{prefix}.weight"), [d_out, d_in]) {
            target.weight = Param::from_tensor(w.transpose());
        }
        if target.bias.is_some()
            && let Some(b) = self.raw::<1>(&format!("{prefix}.bias"), [d_out])
        {
            target.bias = Some(Param::from_tensor(b));
        }
    }

    fn norm(&mut self, prefix: &str, target: &mut LayerNorm<B>) {
        let [d] = target.gamma.dims();
        if let Some(w) = self.raw::<1>(&format!("{prefix}.weight"), [d]) {
            target.gamma = Param::from_tensor(w);
        }
        if let Some(b) = self.raw::<1>(&format!("{prefix}.bias"), [d]) {
            target.beta = Some(Param::from_tensor(b));
        }
    }

    fn vector(&mut self, key: &str, target: &mut Param<Tensor<B, 1>>) {
        let [d] = target.dims();
        if let Some(v) = self.raw::<1>(key, [d]) {
            *target = Param::from_tensor(v);
        }
    }

    fn tokens(&mut self, key: &str, target: &mut Param<Tensor<B, 3>>) {
        let dims = target.dims();
        if let Some(v) = self.raw::<3>(key, dims) {
            *target = Param::from_tensor(v);
        }
    }
}

/// Builds the model for `config` from `map`. Every missing, unexpected or mis-shaped tensor is
/// reported in one [`WeightsError::Mismatch`].
pub fn load<B: Backend>(
    config: &DinoV3Config,
    map: &TensorMap,
    device: &B::Device,
) -> Result<DinoV3<B>, WeightsError> {
    let mut model: DinoV3<B> = config.init(device);
    let mut t = Taker::<B> {
        map,
        expected: expected_tensors(config),
        used: Vec::new(),
        missing: Vec::new(),
        misshaped: Vec::new(),
        device,
    };
    let e = &mut model.embeddings;
    t.tokens("embeddings.cls_token", &mut e.cls_token);
    t.tokens("embeddings.mask_token", &mut e.mask_token);
    t.tokens("embeddings.register_tokens", &mut e.register_tokens);
    let (d, k) = (config.hidden_size, e.patch.weight.dims()[0]);
    let p = config.patch_size;
    if let Some(w) = t.raw::<4>(
        "embeddings.patch_embeddings.weight",
        [d, config.num_channels, p, p],
    ) {
        e.patch.weight = Param::from_tensor(w.reshape([d, k]).transpose());
    }
    if let Some(b) = t.raw::<1>("embeddings.patch_embeddings.bias", [d]) {
        e.patch.bias = Some(Param::from_tensor(b));
    }
    for (i, layer) in model.layers.iter_mut().enumerate() {
        let pre = format!("layer.{i}");
        t.norm(&format!("{pre}.norm1"), &mut layer.norm1);
        t.norm(&format!("{pre}.norm2"), &mut layer.norm2);
        let a = &mut layer.attention;
        t.linear(&format!("{pre}.attention.q_proj"), &mut a.q_proj);
        t.linear(&format!("{pre}.attention.k_proj"), &mut a.k_proj);
        t.linear(&format!("{pre}.attention.v_proj"), &mut a.v_proj);
        t.linear(&format!("{pre}.attention.o_proj"), &mut a.o_proj);
        t.vector(
            &format!("{pre}.layer_scale1.lambda1"),
            &mut layer.layer_scale1,
        );
        t.vector(
            &format!("{pre}.layer_scale2.lambda1"),
            &mut layer.layer_scale2,
        );
        let m = &mut layer.mlp;
        t.linear(&format!("{pre}.mlp.up_proj"), &mut m.up_proj);
        t.linear(&format!("{pre}.mlp.down_proj"), &mut m.down_proj);
        if let Some(g) = m.gate_proj.as_mut() {
            t.linear(&format!("{pre}.mlp.gate_proj"), g);
        }
    }
    t.norm("norm", &mut model.norm);
    let mut unexpected: Vec<String> = map
        .tensors
        .keys()
        .filter(|k| !t.used.contains(k))
        .cloned()
        .collect();
    unexpected.sort();
    if t.missing.is_empty() && t.misshaped.is_empty() && unexpected.is_empty() {
        Ok(model)
    } else {
        Err(WeightsError::Mismatch {
            source_name: map.source_name.clone(),
            missing: t.missing,
            unexpected,
            misshaped: t.misshaped,
        })
    }
}

/// Tensors by name: shape and row-major values.
pub type NamedTensors = std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Every f32-convertible tensor of a safetensors file by name (inputs and reference outputs; the
/// weights go through [`read_safetensors`]).
pub fn read_f32_tensors(path: &Path) -> Result<NamedTensors, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    st.iter()
        .map(|(name, v)| {
            if v.dtype() != safetensors::Dtype::F32 {
                return Err(format!(
                    "{}: {name} is {:?}, not F32",
                    path.display(),
                    v.dtype()
                ));
            }
            let data = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok((name.to_string(), (v.shape().to_vec(), data)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_names_map_to_hub_names() {
        assert_eq!(
            canonical("model.layer.3.norm1.weight").unwrap(),
            "layer.3.norm1.weight"
        );
        assert_eq!(
            canonical("storage_tokens").unwrap(),
            "embeddings.register_tokens"
        );
        assert_eq!(
            canonical("blocks.0.ls2.gamma").unwrap(),
            "layer.0.layer_scale2.lambda1"
        );
        assert_eq!(
            canonical("blocks.5.mlp.w3.bias").unwrap(),
            "layer.5.mlp.down_proj.bias"
        );
        assert_eq!(canonical("rope_embed.periods"), None);
        assert_eq!(canonical("blocks.1.attn.qkv.bias_mask"), None);
    }

    #[test]
    fn fused_qkv_splits_and_drops_k_bias() {
        let mut m = BTreeMap::new();
        m.insert(
            "layer.0.attention.qkv_proj.weight".into(),
            (vec![6, 2], (0..12).map(|x| x as f32).collect()),
        );
        m.insert(
            "layer.0.attention.qkv_proj.bias".into(),
            (vec![6], (0..6).map(|x| x as f32).collect()),
        );
        split_fused_qkv(&mut m);
        assert_eq!(
            m["layer.0.attention.k_proj.weight"].1,
            vec![4.0, 5.0, 6.0, 7.0]
        );
        assert_eq!(m["layer.0.attention.v_proj.bias"].1, vec![4.0, 5.0]);
        assert!(!m.contains_key("layer.0.attention.k_proj.bias"));
    }
}
