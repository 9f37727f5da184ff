//! The compute backends, in one place: which Burn backend runs on the CPU, which devices and
//! precisions a build can use, and the error for one it cannot. Every stage that computes (embed,
//! mine, train) picks its concrete backend from here.

use serde::{Deserialize, Serialize};

/// The CPU backend (burn-ndarray, f32).
pub type Cpu = burn_ndarray::NdArray<f32>;

/// Compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDevice {
    #[default]
    Cpu,
    /// The first NVIDIA GPU (needs the `cuda` build feature).
    Cuda,
}

/// Floating-point precision of the encoder's weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// bfloat16: on CUDA, or on CPUs with AVX512_BF16 (bf16 products, f32 accumulation).
    Bf16,
}

impl Precision {
    /// The PyTorch dtype name, for side-by-side benchmarks.
    pub fn torch_name(self) -> &'static str {
        match self {
            Precision::F32 => "float32",
            Precision::Bf16 => "bfloat16",
        }
    }
}

/// Why the CPU cannot run the bf16 path (its kernels need `vdpbf16ps`).
pub const CPU_BF16_UNSUPPORTED: &str = "bf16 on the CPU needs AVX-512 with AVX512_BF16 (`vdpbf16ps`), which this CPU lacks; use embed.precision = \"f32\"";

/// Why this build cannot run a device/precision pair.
pub fn unsupported(device: ComputeDevice, precision: Precision) -> &'static str {
    match (device, precision) {
        (ComputeDevice::Cpu, Precision::Bf16) => CPU_BF16_UNSUPPORTED,
        _ => "this build has no CUDA support; rebuild with `--features cuda`",
    }
}
