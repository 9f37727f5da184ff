//! What every CUDA engine of the project shares (the DINOv3 encoder in `embed::cuda`, the mining
//! engine in `mine::cuda`): opening a GPU, device buffers addressed by raw pointer, NVRTC
//! compilation of CUDA C at load time and the cuBLASLt GEMM wrapper ([`lt`]). The GPU sibling of
//! `gemm`, the host kernels both CPU engines share.
//!
//! libcuda, libnvrtc and libcublasLt are loaded at run time (cudarc's dynamic loading), so a
//! build needs no CUDA toolkit and a machine without a GPU fails with an error, not at link time.

pub(crate) mod lt;

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, LaunchConfig};
use cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};

use lt::Dt;

/// A failure inside a CUDA engine (driver, NVRTC, cuBLASLt, a kernel), with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("CUDA engine: {0}")]
pub struct CudaError(pub String);

/// Enqueues kernel `f` on `stream` with `cfg` and the arguments (references to plain values:
/// device addresses and sizes).
macro_rules! launch {
    ($stream:expr, $f:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        use cudarc::driver::PushKernelArg as _;
        let mut l = $stream.launch_builder($f);
        $( l.arg($arg); )+
        unsafe { l.launch($cfg) }
            .map(|_| ())
            .map_err(|e| $crate::gpu::CudaError(format!("kernel launch: {e}")))
    }};
}
pub(crate) use launch;

/// Maps a driver error to a [`CudaError`] that says what was being done.
pub(crate) fn drv(what: &str) -> impl FnOnce(cudarc::driver::DriverError) -> CudaError + '_ {
    move |e| CudaError(format!("{what}: {e}"))
}

/// Opens GPU `ordinal` with one stream. Every buffer of an engine lives on that stream, so
/// cudarc's cross-stream event tracking is turned off (it only adds work).
pub(crate) fn open(ordinal: usize) -> Result<(Arc<CudaContext>, Arc<CudaStream>), CudaError> {
    let ctx = std::panic::catch_unwind(|| CudaContext::new(ordinal))
        .map_err(|_| CudaError("the CUDA driver (libcuda) could not be loaded".into()))?
        .map_err(drv("opening the GPU"))?;
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().map_err(drv("creating a stream"))?;
    Ok((ctx, stream))
}

/// The GPU's compute capability, refused below 8.0 (the engines use bf16 tensor cores and
/// `cp.async`-era instructions).
pub(crate) fn capability(ctx: &CudaContext) -> Result<(i32, i32), CudaError> {
    let (major, minor) = ctx
        .compute_capability()
        .map_err(drv("reading the compute capability"))?;
    if major < 8 {
        return Err(CudaError(format!(
            "compute capability {major}.{minor}: the CUDA engines need 8.0 or later"
        )));
    }
    Ok((major, minor))
}

/// Compiles CUDA C `source` to PTX for compute capability `cc` (or NVRTC's default
/// architecture). Needs only libnvrtc, not a GPU: tests compile the sources wherever NVRTC loads.
pub(crate) fn compile(
    source: &str,
    cc: Option<(i32, i32)>,
) -> Result<cudarc::nvrtc::Ptx, CudaError> {
    let mut options = vec!["--std=c++17".to_string()];
    if let Some((major, minor)) = cc {
        options.push(format!("--gpu-architecture=sm_{major}{minor}"));
    }
    let opts = CompileOptions {
        options,
        ..Default::default()
    };
    std::panic::catch_unwind(|| compile_ptx_with_opts(source, opts))
        .map_err(|_| CudaError("libnvrtc could not be loaded".into()))?
        .map_err(|e| CudaError(format!("compiling the CUDA kernels: {e}")))
}

/// A device allocation and its address (engines pass raw addresses to kernels and cuBLASLt; the
/// slice keeps the memory alive and serves the typed copies).
pub(crate) struct Dev<T> {
    pub(crate) mem: CudaSlice<T>,
    pub(crate) ptr: u64,
}

/// Untyped device bytes (GEMM operands whose type is chosen at run time).
pub(crate) type Buf = Dev<u8>;

impl<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits> Dev<T> {
    pub(crate) fn zeros(stream: &Arc<CudaStream>, len: usize) -> Result<Self, CudaError> {
        let mem = stream
            .alloc_zeros::<T>(len.max(1))
            .map_err(drv("allocating device memory"))?;
        let (ptr, _) = mem.device_ptr(stream);
        Ok(Self { mem, ptr })
    }
}

impl<T: cudarc::driver::DeviceRepr> Dev<T> {
    /// A copy of `values` on the device.
    pub(crate) fn from_host(stream: &Arc<CudaStream>, values: &[T]) -> Result<Self, CudaError> {
        if values.is_empty() {
            return Err(CudaError("uploading an empty buffer".into()));
        }
        let mem = stream.clone_htod(values).map_err(drv("uploading"))?;
        let (ptr, _) = mem.device_ptr(stream);
        Ok(Self { mem, ptr })
    }
}

impl Buf {
    /// `values` on the device as `dt` (bf16 rounded to nearest even).
    pub(crate) fn upload(
        stream: &Arc<CudaStream>,
        values: &[f32],
        dt: Dt,
    ) -> Result<Self, CudaError> {
        let bytes: Vec<u8> = match dt {
            Dt::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dt::Bf16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes())
                .collect(),
        };
        let mem = stream
            .clone_htod(&bytes)
            .map_err(drv("uploading weights"))?;
        let (ptr, _) = mem.device_ptr(stream);
        Ok(Self { mem, ptr })
    }
}

/// A grid-stride launch over `total` elements.
pub(crate) fn elementwise(total: u64) -> LaunchConfig {
    let blocks = total.div_ceil(256).clamp(1, 65_535 * 8) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}
