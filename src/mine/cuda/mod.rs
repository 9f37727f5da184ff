//! Mining on one NVIDIA GPU: the products through cuBLASLt in exact FP32 (the DINOv3 engine's GEMM
//! wrapper), the reductions that follow them in NVRTC kernels, so an assignment pass reads back
//! `n` labels and distances and a kNN search `k` neighbours per row, never a distance matrix.
//!
//! - **Assignment** (k-means): `X·Cᵀ` for a chunk of rows, then one warp per row takes the argmin
//!   of `‖c‖² − 2·x·c` (lowest index among ties, as the host does); the per-cluster sums are f64
//!   sums in row order over the rows grouped by label (a counting sort of the labels on the host),
//!   so they are deterministic.
//! - **Top-k** (kNN): `Q·Cᵀ` for a block of queries against every candidate, then one block per
//!   query keeps a sorted list per thread in registers and merges them by (key, id), the host's
//!   total order.
//!
//! Why not Burn's CUDA backend (the reference path of [`super::Compute::new`]): it returns every
//! distance to the host for the reduction, and its matmul is far from cuBLAS.

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig};

use crate::gpu::lt::{Dt, Epilogue, Lt, Shape};
use crate::gpu::{self, CudaError, Dev, drv, launch};

const SOURCE: &str = include_str!("kernels.cu");

/// Floats of one block of products (`rows × candidates`): 1 GiB.
const PRODUCT_BUDGET: usize = 1 << 28;

/// The list sizes the top-k kernel is built for; `k` above the largest is not reduced on the GPU.
pub const TOP_K_MAX: usize = 64;

/// Compiles the mining kernels (tests call it without a GPU).
pub(crate) fn compile(cc: Option<(i32, i32)>) -> Result<cudarc::nvrtc::Ptx, CudaError> {
    gpu::compile(SOURCE, cc)
}

struct Kernels {
    _module: Arc<CudaModule>,
    sq_norms: CudaFunction,
    assign: CudaFunction,
    cluster_sums: CudaFunction,
    top_k: [(usize, CudaFunction); 3],
}

/// The GPU mining engine: a context, one stream, cuBLASLt and the compiled kernels.
pub struct CudaMining {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    lt: Lt,
    kernels: Kernels,
    /// One caller at a time on the stream (mining calls may come from several threads).
    lock: Mutex<()>,
}

impl std::fmt::Debug for CudaMining {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Rows resident on the GPU, with their squared norms.
pub struct GpuRows {
    pub rows: usize,
    pub dim: usize,
    x: Dev<f32>,
    sq: Dev<f32>,
}

/// One assignment pass, as [`super::compute::Nearest`] holds it.
pub struct Assigned {
    pub labels: Vec<u32>,
    pub sq_dist: Vec<f32>,
    pub sums: Vec<f32>,
    pub counts: Vec<f32>,
}

fn warps(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(8).max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn dim_i32(v: usize, what: &str) -> Result<i32, CudaError> {
    i32::try_from(v).map_err(|_| CudaError(format!("{what} {v} is above the kernels' 2³¹")))
}

impl CudaMining {
    /// Opens GPU `ordinal` and compiles the kernels for it.
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
        let (ctx, stream) = gpu::open(ordinal)?;
        let ptx = compile(Some(gpu::capability(&ctx)?))?;
        let module = ctx.load_module(ptx).map_err(drv("loading the kernels"))?;
        let f = |name: &str| {
            module
                .load_function(name)
                .map_err(|e| CudaError(format!("kernel {name}: {e}")))
        };
        let kernels = Kernels {
            sq_norms: f("sq_norms")?,
            assign: f("assign")?,
            cluster_sums: f("cluster_sums")?,
            top_k: [
                (16, f("top_k_16")?),
                (32, f("top_k_32")?),
                (64, f("top_k_64")?),
            ],
            _module: module,
        };
        let lt = Lt::new(&stream)?;
        Ok(Self {
            ctx,
            stream,
            lt,
            kernels,
            lock: Mutex::new(()),
        })
    }

    /// What a report says about the engine.
    pub fn describe(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        format!("cuda {name} (cuBLASLt FP32)")
    }

    fn guard(&self) -> Result<std::sync::MutexGuard<'_, ()>, CudaError> {
        let g = self
            .lock
            .lock()
            .map_err(|_| CudaError("a previous GPU call panicked".into()))?;
        self.ctx
            .bind_to_thread()
            .map_err(drv("binding the GPU to this thread"))?;
        Ok(g)
    }

    fn sync(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(drv("mining on the GPU"))
    }

    fn download<T: cudarc::driver::DeviceRepr + Default + Clone>(
        &self,
        d: &Dev<T>,
        len: usize,
    ) -> Result<Vec<T>, CudaError> {
        let mut out = vec![T::default(); len];
        if len > 0 {
            self.stream
                .memcpy_dtoh(&d.mem.slice(..len), &mut out)
                .map_err(drv("downloading"))?;
        }
        self.sync()?;
        Ok(out)
    }

    /// Uploads `data` (`rows × dim`, row-major) and computes its squared norms on the GPU.
    pub fn upload(&self, data: &[f32], dim: usize) -> Result<GpuRows, CudaError> {
        let _g = self.guard()?;
        self.upload_locked(data, dim)
    }

    fn upload_locked(&self, data: &[f32], dim: usize) -> Result<GpuRows, CudaError> {
        if dim == 0 || data.is_empty() || !data.len().is_multiple_of(dim) {
            return Err(CudaError(format!(
                "{} values are not rows of {dim}",
                data.len()
            )));
        }
        let rows = data.len() / dim;
        let x = Dev::from_host(&self.stream, data)?;
        let sq = Dev::<f32>::zeros(&self.stream, rows)?;
        let (r, d) = (dim_i32(rows, "rows")?, dim_i32(dim, "dim")?);
        launch!(
            self.stream,
            &self.kernels.sq_norms,
            warps(rows),
            &x.ptr,
            &r,
            &d,
            &sq.ptr
        )?;
        Ok(GpuRows { rows, dim, x, sq })
    }

    /// Enqueues `out [rows, c.rows] = q[q0..q0 + rows] · cᵀ` in exact FP32.
    fn product(
        &self,
        q: &GpuRows,
        q0: usize,
        rows: usize,
        c: &GpuRows,
        out: &Dev<f32>,
    ) -> Result<(), CudaError> {
        let plan = self.lt.plan(Shape {
            rows,
            n: c.rows,
            k: c.dim,
            input: Dt::F32,
            output: Dt::F32,
            epilogue: Epilogue::None,
            accumulate: false,
        })?;
        let x = q.x.ptr + (q0 * q.dim * 4) as u64;
        self.lt.run(&plan, x, c.x.ptr, 0, out.ptr)
    }

    /// Query rows per block of products against `nc` candidates within the memory budget.
    fn block_rows(nq: usize, nc: usize) -> usize {
        (PRODUCT_BUDGET / nc.max(1)).clamp(1, nq.max(1))
    }

    /// `q · cᵀ`, `q.rows × c.rows`, row-major, on the host.
    pub fn dots(&self, q: &GpuRows, c: &GpuRows) -> Result<Vec<f32>, CudaError> {
        let _g = self.guard()?;
        self.dots_locked(q, c)
    }

    fn dots_locked(&self, q: &GpuRows, c: &GpuRows) -> Result<Vec<f32>, CudaError> {
        if q.dim != c.dim {
            return Err(CudaError(format!(
                "rows of {} against rows of {}",
                q.dim, c.dim
            )));
        }
        let nc = c.rows;
        let block = Self::block_rows(q.rows, nc);
        let buf = Dev::<f32>::zeros(&self.stream, block * nc)?;
        let mut out = vec![0f32; q.rows * nc];
        for q0 in (0..q.rows).step_by(block) {
            let rows = block.min(q.rows - q0);
            self.product(q, q0, rows, c, &buf)?;
            self.stream
                .memcpy_dtoh(
                    &buf.mem.slice(..rows * nc),
                    &mut out[q0 * nc..(q0 + rows) * nc],
                )
                .map_err(drv("downloading products"))?;
        }
        self.sync()?;
        Ok(out)
    }

    /// `q · cᵀ` for host rows `q` against resident rows.
    pub fn dots_host(&self, q: &[f32], c: &GpuRows) -> Result<Vec<f32>, CudaError> {
        let _g = self.guard()?;
        let q = self.upload_locked(q, c.dim)?;
        self.dots_locked(&q, c)
    }

    /// Every resident row's nearest of the `k × dim` `centroids` (squared Euclidean), its squared
    /// distance, and the per-centroid sums and counts.
    pub fn assign(&self, x: &GpuRows, centroids: &[f32]) -> Result<Assigned, CudaError> {
        let _g = self.guard()?;
        let (n, dim) = (x.rows, x.dim);
        let cen = self.upload_locked(centroids, dim)?;
        let k = cen.rows;
        let block = Self::block_rows(n, k);
        let dots = Dev::<f32>::zeros(&self.stream, block * k)?;
        let labels = Dev::<u32>::zeros(&self.stream, n)?;
        let sq_dist = Dev::<f32>::zeros(&self.stream, n)?;
        let ki = dim_i32(k, "centroids")?;
        for r0 in (0..n).step_by(block) {
            let rows = block.min(n - r0);
            self.product(x, r0, rows, &cen, &dots)?;
            let ri = dim_i32(rows, "rows")?;
            let (lab, sqd, xsq) = (
                labels.ptr + (r0 * 4) as u64,
                sq_dist.ptr + (r0 * 4) as u64,
                x.sq.ptr + (r0 * 4) as u64,
            );
            launch!(
                self.stream,
                &self.kernels.assign,
                warps(rows),
                &dots.ptr,
                &ri,
                &ki,
                &cen.sq.ptr,
                &xsq,
                &lab,
                &sqd
            )?;
        }
        let labels = self.download(&labels, n)?;
        let sq_dist = self.download(&sq_dist, n)?;
        // Rows grouped by label (a counting sort), then one block per cluster sums its rows.
        let mut offsets = vec![0u32; k + 1];
        for &l in &labels {
            offsets[l as usize + 1] += 1;
        }
        let counts: Vec<f32> = offsets[1..].iter().map(|&c| c as f32).collect();
        for j in 0..k {
            offsets[j + 1] += offsets[j];
        }
        let mut next = offsets.clone();
        let mut order = vec![0u32; n];
        for (i, &l) in labels.iter().enumerate() {
            order[next[l as usize] as usize] = i as u32;
            next[l as usize] += 1;
        }
        let order = Dev::from_host(&self.stream, &order)?;
        let offsets = Dev::from_host(&self.stream, &offsets)?;
        let sums = Dev::<f32>::zeros(&self.stream, k * dim)?;
        let di = dim_i32(dim, "dim")?;
        let cfg = LaunchConfig {
            grid_dim: (k as u32, 1, 1),
            block_dim: (dim.next_multiple_of(32).min(256) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(
            self.stream,
            &self.kernels.cluster_sums,
            cfg,
            &x.x.ptr,
            &di,
            &order.ptr,
            &offsets.ptr,
            &sums.ptr
        )?;
        let sums = self.download(&sums, k * dim)?;
        Ok(Assigned {
            labels,
            sq_dist,
            sums,
            counts,
        })
    }

    /// Each query row's `k` smallest `(key, candidate id)`, ascending, `k` per row (missing ones
    /// `(+∞, u32::MAX)`): key `−q·c` without `euclidean`, `‖c‖² − 2·q·c` with it; the candidate
    /// whose id equals the query's own is skipped. `None` when `k` is above [`TOP_K_MAX`].
    pub fn top_k(
        &self,
        q: &GpuRows,
        q_ids: &[u32],
        c: &GpuRows,
        c_ids: &[u32],
        euclidean: bool,
        k: usize,
    ) -> Result<Option<Vec<(f32, u32)>>, CudaError> {
        let Some((list, f)) = self.kernels.top_k.iter().find(|(l, _)| *l >= k) else {
            return Ok(None);
        };
        let _g = self.guard()?;
        if q.dim != c.dim || q_ids.len() != q.rows || c_ids.len() != c.rows || k == 0 {
            return Err(CudaError(format!(
                "{} query ids for {} rows of {}, {} candidate ids for {} rows of {}, k {k}",
                q_ids.len(),
                q.rows,
                q.dim,
                c_ids.len(),
                c.rows,
                c.dim
            )));
        }
        let (nq, nc) = (q.rows, c.rows);
        let qid = Dev::from_host(&self.stream, q_ids)?;
        let cid = Dev::from_host(&self.stream, c_ids)?;
        let block = Self::block_rows(nq, nc);
        let dots = Dev::<f32>::zeros(&self.stream, block * nc)?;
        let keys = Dev::<f32>::zeros(&self.stream, nq * k)?;
        let ids = Dev::<u32>::zeros(&self.stream, nq * k)?;
        let (nci, ki) = (dim_i32(nc, "candidates")?, dim_i32(k, "k")?);
        let csq = if euclidean { c.sq.ptr } else { 0u64 };
        for q0 in (0..nq).step_by(block) {
            let rows = block.min(nq - q0);
            self.product(q, q0, rows, c, &dots)?;
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: ((4096 / list) as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            let (qp, kp, ip) = (
                qid.ptr + (q0 * 4) as u64,
                keys.ptr + (q0 * k * 4) as u64,
                ids.ptr + (q0 * k * 4) as u64,
            );
            launch!(
                self.stream,
                f,
                cfg,
                &dots.ptr,
                &nci,
                &csq,
                &cid.ptr,
                &qp,
                &ki,
                &kp,
                &ip
            )?;
        }
        let keys = self.download(&keys, nq * k)?;
        let ids = self.download(&ids, nq * k)?;
        Ok(Some(keys.into_iter().zip(ids).collect()))
    }
}
