//! DINOv3 ViT hyper-parameters, with the published sizes as presets.

use burn::config::Config;
use serde::{Deserialize, Serialize};

/// The MLP's nonlinearity, as `hidden_act` in the Hugging Face config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Exact (erf) GELU.
    Gelu,
    /// SiLU (swish), used by the gated (SwiGLU) sizes.
    Silu,
}

/// Architecture of one DINOv3 ViT. Field names follow transformers' `DINOv3ViTConfig`.
#[derive(Config, Debug, PartialEq)]
pub struct DinoV3Config {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[config(default = 16)]
    pub patch_size: usize,
    #[config(default = 4)]
    pub num_register_tokens: usize,
    #[config(default = 3)]
    pub num_channels: usize,
    /// SwiGLU-style `down(act(gate x) * up x)` instead of `down(act(up x))`.
    #[config(default = false)]
    pub use_gated_mlp: bool,
    #[config(default = "Activation::Gelu")]
    pub hidden_act: Activation,
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    #[config(default = 100.0)]
    pub rope_theta: f64,
    #[config(default = true)]
    pub query_bias: bool,
    #[config(default = false)]
    pub key_bias: bool,
    #[config(default = true)]
    pub value_bias: bool,
    #[config(default = true)]
    pub proj_bias: bool,
    #[config(default = true)]
    pub mlp_bias: bool,
    /// Default input resolution (any multiple of `patch_size` works).
    #[config(default = 224)]
    pub image_size: usize,
}

/// The published sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DinoV3Size {
    /// ViT-S/16, 21M parameters, 384-d.
    Vits16,
    /// ViT-S+/16 (gated), 29M, 384-d.
    Vitsplus16,
    /// ViT-B/16, 86M, 768-d.
    Vitb16,
    /// ViT-L/16, 300M, 1024-d.
    Vitl16,
    /// ViT-H+/16 (gated), 840M, 1280-d.
    Vithplus16,
    /// ViT-7B/16 (gated), 6.7B, 4096-d.
    Vit7b16,
}

impl DinoV3Size {
    /// The architecture of this size.
    pub fn config(self) -> DinoV3Config {
        let (d, l, h, i, gated) = match self {
            DinoV3Size::Vits16 => (384, 12, 6, 1536, false),
            DinoV3Size::Vitsplus16 => (384, 12, 6, 1536, true),
            DinoV3Size::Vitb16 => (768, 12, 12, 3072, false),
            DinoV3Size::Vitl16 => (1024, 24, 16, 4096, false),
            DinoV3Size::Vithplus16 => (1280, 32, 20, 5120, true),
            DinoV3Size::Vit7b16 => (4096, 40, 32, 8192, true),
        };
        let c = DinoV3Config::new(d, l, h, i).with_use_gated_mlp(gated);
        let c = if gated {
            c.with_hidden_act(Activation::Silu)
        } else {
            c
        };
        match self {
            // The 7B model has no query/value bias.
            DinoV3Size::Vit7b16 => c.with_query_bias(false).with_value_bias(false),
            _ => c,
        }
    }

    /// The short name used in model ids and table names.
    pub fn name(self) -> &'static str {
        match self {
            DinoV3Size::Vits16 => "vits16",
            DinoV3Size::Vitsplus16 => "vitsplus16",
            DinoV3Size::Vitb16 => "vitb16",
            DinoV3Size::Vitl16 => "vitl16",
            DinoV3Size::Vithplus16 => "vithplus16",
            DinoV3Size::Vit7b16 => "vit7b16",
        }
    }
}

impl DinoV3Config {
    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Tokens before the patches: CLS + registers.
    pub fn num_prefix_tokens(&self) -> usize {
        1 + self.num_register_tokens
    }
}
