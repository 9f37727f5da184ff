//! The GEMMs of the CUDA engines through cuBLASLt: `y = x·wᵀ + b` for row-major `x [rows, k]` and
//! `w [n, k]` (PyTorch's weight layout; for mining, candidate rows), with the bias, GELU and the
//! residual add done in the epilogue, so no layer reads its output back.
//!
//! cuBLASLt is column-major: row-major `y [rows, n]` is column-major `yᵀ [n, rows]`, and
//! `yᵀ = w · xᵀ` is the "TN" product (A = w transposed, B = x as stored) the library tunes first.
//! A [`Plan`] (descriptors and the heuristic's algorithm) is made once per shape, before any
//! graph is captured; a call only sets the bias pointer and enqueues.

use std::ffi::c_void;
use std::mem::size_of;

use cudarc::cublaslt::{result, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use super::CudaError;

/// Element type of a GEMM operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Dt {
    F32,
    Bf16,
}

impl Dt {
    fn cuda(self) -> sys::cudaDataType {
        match self {
            Dt::F32 => sys::cudaDataType::CUDA_R_32F,
            Dt::Bf16 => sys::cudaDataType::CUDA_R_16BF,
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            Dt::F32 => 4,
            Dt::Bf16 => 2,
        }
    }
}

/// What the epilogue does after the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Epilogue {
    /// The product alone (the bias pointer is ignored).
    None,
    /// `+ b`.
    Bias,
    /// `gelu(· + b)` (cuBLASLt's GELU is the tanh form).
    GeluBias,
}

/// One GEMM shape: `out [rows, n] (+)= x [rows, k] · w [n, k]ᵀ + b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Shape {
    pub rows: usize,
    pub n: usize,
    pub k: usize,
    /// Type of `x` and `w`.
    pub input: Dt,
    /// Type of `out` (and of `b`).
    pub output: Dt,
    pub epilogue: Epilogue,
    /// `out += …` (the residual add) instead of `out = …`.
    pub accumulate: bool,
}

fn lt(what: &str, e: result::CublasError) -> CudaError {
    CudaError(format!("cuBLASLt {what}: {e:?}"))
}

/// A handle and its workspace, bound to one stream.
pub(crate) struct Lt {
    handle: sys::cublasLtHandle_t,
    _workspace: CudaSlice<u8>,
    workspace: u64,
    workspace_bytes: usize,
    stream: sys::cudaStream_t,
}

// The handle is used by one engine at a time (the engine serialises its forward passes).
unsafe impl Send for Lt {}
unsafe impl Sync for Lt {}

impl Lt {
    pub fn new(stream: &std::sync::Arc<CudaStream>) -> Result<Self, CudaError> {
        let handle = result::create_handle().map_err(|e| lt("create", e))?;
        // NVIDIA's advice for Hopper: 32 MiB lets the split-K and stream-K kernels run.
        let workspace_bytes = 32 << 20;
        let buf = stream
            .alloc_zeros::<u8>(workspace_bytes)
            .map_err(|e| CudaError(format!("workspace: {e}")))?;
        let (workspace, _) = buf.device_ptr(stream);
        Ok(Self {
            handle,
            _workspace: buf,
            workspace,
            workspace_bytes,
            stream: stream.cu_stream() as sys::cudaStream_t,
        })
    }

    /// Descriptors and the heuristic's first algorithm for `s`.
    pub fn plan(&self, s: Shape) -> Result<Plan, CudaError> {
        let compute = sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let desc = result::create_matmul_desc(compute, sys::cudaDataType::CUDA_R_32F)
            .map_err(|e| lt("matmul desc", e))?;
        let mut plan = Plan {
            shape: s,
            desc,
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            c: std::ptr::null_mut(),
            algo: None,
        };
        // cublasOperation_t: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1.
        let (op_t, op_n) = (1i32, 0i32);
        let epi = match s.epilogue {
            Epilogue::None => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
            Epilogue::Bias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            Epilogue::GeluBias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS,
        };
        unsafe {
            set_desc(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &op_t,
            )?;
            set_desc(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                &op_n,
            )?;
            set_desc(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
                &epi,
            )?;
        }
        let layout = |t: Dt, rows: usize, cols: usize, ld: usize| {
            result::create_matrix_layout(t.cuda(), rows as u64, cols as u64, ld as i64)
                .map_err(|e| lt("layout", e))
        };
        plan.a = layout(s.input, s.k, s.n, s.k)?;
        plan.b = layout(s.input, s.k, s.rows, s.k)?;
        plan.c = layout(s.output, s.n, s.rows, s.n)?;
        let pref = result::create_matmul_pref().map_err(|e| lt("preference", e))?;
        let found = unsafe {
            let size = self.workspace_bytes;
            result::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&size) as *const usize as *const c_void,
                size_of::<usize>(),
            )
            .map_err(|e| lt("preference", e))
            .and_then(|_| {
                result::get_matmul_algo_heuristic(
                    self.handle,
                    desc,
                    plan.a,
                    plan.b,
                    plan.c,
                    plan.c,
                    pref,
                )
                .map_err(|e| lt(&format!("no algorithm for {s:?}"), e))
            })
        };
        unsafe {
            let _ = result::destroy_matmul_pref(pref);
        }
        plan.algo = Some(found?.algo);
        Ok(plan)
    }

    /// Enqueues `out (+)= x·wᵀ + b` on the stream. Pointers are device addresses of buffers of the
    /// plan's shape and types.
    pub fn run(&self, p: &Plan, x: u64, w: u64, b: u64, out: u64) -> Result<(), CudaError> {
        let Some(algo) = p.algo.as_ref() else {
            return Err(CudaError("GEMM plan without an algorithm".into()));
        };
        let (alpha, beta) = (1f32, if p.shape.accumulate { 1f32 } else { 0f32 });
        unsafe {
            if p.shape.epilogue != Epilogue::None {
                set_desc(
                    p.desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &b,
                )?;
            }
            result::matmul(
                self.handle,
                p.desc,
                (&alpha) as *const f32 as *const c_void,
                (&beta) as *const f32 as *const c_void,
                w as *const c_void,
                p.a,
                x as *const c_void,
                p.b,
                out as *const c_void,
                p.c,
                out as *mut c_void,
                p.c,
                algo,
                self.workspace as *mut c_void,
                self.workspace_bytes,
                self.stream,
            )
            .map_err(|e| lt(&format!("matmul {:?}", p.shape), e))
        }
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        unsafe {
            let _ = result::destroy_handle(self.handle);
        }
    }
}

unsafe fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    v: &T,
) -> Result<(), CudaError> {
    unsafe {
        result::set_matmul_desc_attribute(
            desc,
            attr,
            v as *const T as *const c_void,
            size_of::<T>(),
        )
        .map_err(|e| lt("descriptor", e))
    }
}

/// The descriptors of one GEMM shape.
pub(crate) struct Plan {
    pub shape: Shape,
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: Option<sys::cublasLtMatmulAlgo_t>,
}

unsafe impl Send for Plan {}
unsafe impl Sync for Plan {}

impl Drop for Plan {
    fn drop(&mut self) {
        unsafe {
            for l in [self.a, self.b, self.c] {
                if !l.is_null() {
                    let _ = result::destroy_matrix_layout(l);
                }
            }
            let _ = result::destroy_matmul_desc(self.desc);
        }
    }
}
