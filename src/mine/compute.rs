//! Dense linear algebra for mining: the one place where it touches GEMMs. Host code keeps the
//! vectors; blocks of rows go through a matrix product and are reduced (argmin, top-k, sums) while
//! the block is still in cache.
//!
//! Two engines:
//! - **Host** ([`Compute::host`]): the `gemm` crate's AVX-512 / AVX2 micro-kernels, the same ones
//!   as the CPU DINOv3 engine. The k-means assignment and the kNN top-k are fused into the blocked
//!   product: each rayon task multiplies a small block of rows single-threaded and reduces it at
//!   once, so the `rows × k` distances never leave L2 and no second pass reads them back.
//! - **CUDA** ([`Compute::cuda`], `cuda` feature): cuBLASLt products with the argmin and the top-k
//!   reduced on the GPU ([`super::cuda`]); only labels, distances and neighbour lists come back.
//! - **Device** ([`Compute::new`]): a Burn backend. On Burn's ndarray backend it is the reference
//!   the host engine is tested against.

use burn::prelude::{Backend, Int, Tensor, TensorData};
use burn::tensor::IndexingUpdateOp;
use rayon::prelude::*;

use super::MineError;
use crate::gemm::{View, matmul};

/// Rows per device chunk in the assignment step (`chunk × k` distances at a time).
const DEVICE_CHUNK_ROWS: usize = 32_768;
/// Query rows per device block.
const DEVICE_QUERY_BLOCK: usize = 1024;
/// Candidate rows per device block.
const DEVICE_CANDIDATE_BLOCK: usize = 16_384;
/// Elements of one host distance block (`rows × cols`): 64 Ki floats, 256 KiB, fits in L2.
const HOST_BLOCK_ELEMS: usize = 1 << 16;
/// Query rows per host task in the top-k scan.
const HOST_QUERY_BLOCK: usize = 64;
/// Rows per side of a host block of the symmetric scan (256 × 256 dots, 256 KiB).
const TRIANGLE_BLOCK: usize = 256;

/// Where the products run.
#[derive(Debug, Clone)]
enum Engine<B: Backend> {
    Host,
    #[cfg(feature = "cuda")]
    Cuda(std::sync::Arc<super::cuda::CudaMining>),
    Device(B::Device),
}

/// A compute engine for the mining algorithms.
#[derive(Debug, Clone)]
pub struct Compute<B: Backend> {
    engine: Engine<B>,
}

/// Rows kept where the products run: borrowed on the host, uploaded once to a device.
pub struct Resident<'a, B: Backend> {
    rows: usize,
    dim: usize,
    sq: Vec<f32>,
    place: Place<'a, B>,
}

enum Place<'a, B: Backend> {
    Host(&'a [f32]),
    #[cfg(feature = "cuda")]
    Cuda(super::cuda::GpuRows),
    /// Row chunks with their squared norms (`[rows, 1]`).
    Device(Vec<(Tensor<B, 2>, Tensor<B, 2>)>),
}

impl<B: Backend> Resident<'_, B> {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn dim(&self) -> usize {
        self.dim
    }
}

/// One assignment pass: every row's nearest centroid (squared Euclidean), with the per-cluster
/// sums and counts a Lloyd or mini-batch update needs.
#[derive(Debug, Clone)]
pub struct Nearest {
    pub labels: Vec<u32>,
    /// Squared distance of each row to its centroid.
    pub sq_dist: Vec<f32>,
    /// `k × dim` sums of the rows assigned to each centroid.
    pub sums: Vec<f32>,
    pub counts: Vec<f32>,
}

/// Squared L2 norm of every `dim`-row of `data`.
pub fn sq_norms(data: &[f32], dim: usize) -> Vec<f32> {
    data.chunks_exact(dim.max(1))
        .map(|r| r.iter().map(|v| v * v).sum())
        .collect()
}

impl<B: Backend> Compute<B> {
    /// Runs on Burn backend `B` on `device` (the GPU with the `cuda` feature).
    pub fn new(device: B::Device) -> Self {
        Self {
            engine: Engine::Device(device),
        }
    }

    /// Runs on the host's `gemm` kernels and the current rayon pool.
    pub fn host() -> Self {
        Self {
            engine: Engine::Host,
        }
    }

    /// Runs on GPU `ordinal`: cuBLASLt products, reductions on the GPU.
    #[cfg(feature = "cuda")]
    pub fn cuda(ordinal: usize) -> Result<Self, MineError> {
        let m = super::cuda::CudaMining::open(ordinal).map_err(gpu_err)?;
        Ok(Self {
            engine: Engine::Cuda(std::sync::Arc::new(m)),
        })
    }

    pub fn is_host(&self) -> bool {
        matches!(self.engine, Engine::Host)
    }

    /// What a report says about the engine.
    pub fn describe(&self) -> String {
        match &self.engine {
            Engine::Host => format!("host gemm, {} threads", rayon::current_num_threads()),
            #[cfg(feature = "cuda")]
            Engine::Cuda(m) => m.describe(),
            Engine::Device(d) => format!("burn {} on {d:?}", std::any::type_name::<B>()),
        }
    }

    fn matrix(device: &B::Device, data: &[f32], rows: usize, dim: usize) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(data.to_vec(), [rows, dim]), device)
    }

    /// `q · cᵀ` for `nq` query rows and `nc` candidate rows: `nq × nc` dot products, row-major.
    pub fn dots(&self, q: &[f32], c: &[f32], dim: usize) -> Result<Vec<f32>, MineError> {
        let (nq, nc) = (q.len() / dim, c.len() / dim);
        match &self.engine {
            Engine::Host => {
                let threads = rayon::current_num_threads();
                let mut out = vec![0f32; nq * nc];
                if nq >= nc {
                    let ct = Rows::all(c, dim).transposed();
                    let b = View::dense(&ct, dim, nc);
                    matmul(&mut out, nc, View::dense(q, nq, dim), b, false, threads);
                } else {
                    // Few queries against many rows: `c · qᵀ`, then the small result turned.
                    let qt = Rows::all(q, dim).transposed();
                    let b = View::dense(&qt, dim, nq);
                    let mut t = vec![0f32; nc * nq];
                    matmul(&mut t, nq, View::dense(c, nc, dim), b, false, threads);
                    for (j, row) in t.chunks_exact(nq).enumerate() {
                        for (i, &v) in row.iter().enumerate() {
                            out[i * nc + j] = v;
                        }
                    }
                }
                Ok(out)
            }
            #[cfg(feature = "cuda")]
            Engine::Cuda(m) => {
                let c = m.upload(c, dim).map_err(gpu_err)?;
                m.dots_host(q, &c).map_err(gpu_err)
            }
            Engine::Device(d) => {
                let q = Self::matrix(d, q, nq, dim);
                let c = Self::matrix(d, c, nc, dim);
                host_f32(q.matmul(c.transpose()))
            }
        }
    }

    /// Keeps `data` (rows of `dim`) where the products run, for repeated use.
    pub fn resident<'a>(&self, data: &'a [f32], dim: usize) -> Result<Resident<'a, B>, MineError> {
        let rows = data.len() / dim.max(1);
        let sq = sq_norms(data, dim);
        let place = match &self.engine {
            Engine::Host => Place::Host(data),
            #[cfg(feature = "cuda")]
            Engine::Cuda(m) => Place::Cuda(m.upload(data, dim).map_err(gpu_err)?),
            Engine::Device(d) => Place::Device(
                (0..rows)
                    .step_by(DEVICE_CHUNK_ROWS)
                    .map(|start| {
                        let end = (start + DEVICE_CHUNK_ROWS).min(rows);
                        let t = Self::matrix(d, &data[start * dim..end * dim], end - start, dim);
                        let sq = t.clone().powi_scalar(2).sum_dim(1);
                        (t, sq)
                    })
                    .collect(),
            ),
        };
        Ok(Resident {
            rows,
            dim,
            sq,
            place,
        })
    }

    /// `q · rᵀ` against resident rows: `nq × r.rows()`, row-major.
    pub fn dots_against(&self, q: &[f32], r: &Resident<'_, B>) -> Result<Vec<f32>, MineError> {
        let dim = r.dim;
        match (&self.engine, &r.place) {
            (Engine::Host, Place::Host(data)) => self.dots(q, data, dim),
            #[cfg(feature = "cuda")]
            (Engine::Cuda(m), Place::Cuda(rows)) => m.dots_host(q, rows).map_err(gpu_err),
            (Engine::Device(d), Place::Device(chunks)) => {
                let nq = q.len() / dim;
                let qt = Self::matrix(d, q, nq, dim);
                let mut out = vec![0f32; nq * r.rows];
                let mut col = 0;
                for (c, _) in chunks {
                    let w = c.dims()[0];
                    let block = host_f32(qt.clone().matmul(c.clone().transpose()))?;
                    for (i, row) in block.chunks_exact(w).enumerate() {
                        out[i * r.rows + col..i * r.rows + col + w].copy_from_slice(row);
                    }
                    col += w;
                }
                Ok(out)
            }
            _ => Err(MineError::Compute("rows resident on another engine".into())),
        }
    }

    /// Assigns every resident row to its nearest of the `k × dim` `centroids` and sums the rows
    /// per centroid, in one pass.
    pub fn nearest(
        &self,
        points: &Resident<'_, B>,
        centroids: &[f32],
    ) -> Result<Nearest, MineError> {
        let dim = points.dim;
        let k = centroids.len() / dim.max(1);
        if k == 0 {
            return Err(MineError::Compute("no centroids".into()));
        }
        match (&self.engine, &points.place) {
            (Engine::Host, Place::Host(data)) => Ok(host_nearest(data, &points.sq, dim, centroids)),
            #[cfg(feature = "cuda")]
            (Engine::Cuda(m), Place::Cuda(rows)) => {
                let a = m.assign(rows, centroids).map_err(gpu_err)?;
                Ok(Nearest {
                    labels: a.labels,
                    sq_dist: a.sq_dist,
                    sums: a.sums,
                    counts: a.counts,
                })
            }
            (Engine::Device(d), Place::Device(chunks)) => {
                device_nearest::<B>(d, chunks, centroids, k, dim)
            }
            _ => Err(MineError::Compute("rows resident on another engine".into())),
        }
    }

    /// Streams `q · cᵀ` block by block: `visit(state, query row, first candidate, dots)` sees each
    /// query row's dot products with a run of consecutive candidate rows, while they are in cache.
    /// `states` has one entry per query row; rows are visited in parallel, each by one thread.
    /// Picked rows ([`Rows::pick`]) are gathered block by block, never as a whole matrix.
    pub fn scan<S: Send>(
        &self,
        q: Rows<'_>,
        c: Rows<'_>,
        states: &mut [S],
        visit: impl Fn(&mut S, usize, usize, &[f32]) + Sync,
    ) -> Result<(), MineError> {
        let (nq, nc, dim) = (q.len(), c.len(), q.dim);
        if states.len() != nq || c.dim != dim {
            return Err(MineError::Compute(format!(
                "{} states for {nq} query rows of {dim} against rows of {}",
                states.len(),
                c.dim
            )));
        }
        if nq == 0 || nc == 0 {
            return Ok(());
        }
        match &self.engine {
            Engine::Host => {
                let cb = (HOST_BLOCK_ELEMS / HOST_QUERY_BLOCK).min(nc);
                let ct = c.transposed();
                states
                    .par_chunks_mut(HOST_QUERY_BLOCK)
                    .enumerate()
                    .for_each(|(b, st)| {
                        let q0 = b * HOST_QUERY_BLOCK;
                        let rows = st.len();
                        let mut local = Vec::new();
                        let qv = View::dense(q.block(q0, q0 + rows, &mut local), rows, dim);
                        let mut buf = vec![0f32; rows * cb];
                        for c0 in (0..nc).step_by(cb) {
                            let w = cb.min(nc - c0);
                            let cv = View::rows(&ct[c0..], dim, w, nc);
                            matmul(&mut buf[..rows * w], w, qv, cv, false, 1);
                            for (r, s) in st.iter_mut().enumerate() {
                                visit(s, q0 + r, c0, &buf[r * w..(r + 1) * w]);
                            }
                        }
                    });
                Ok(())
            }
            _ => {
                let (mut qbuf, mut cbuf) = (Vec::new(), Vec::new());
                for (qb, st) in states.chunks_mut(DEVICE_QUERY_BLOCK).enumerate() {
                    let q0 = qb * DEVICE_QUERY_BLOCK;
                    let qs = q.block(q0, q0 + st.len(), &mut qbuf);
                    for c0 in (0..nc).step_by(DEVICE_CANDIDATE_BLOCK) {
                        let w = DEVICE_CANDIDATE_BLOCK.min(nc - c0);
                        let dots = self.dots(qs, c.block(c0, c0 + w, &mut cbuf), dim)?;
                        st.par_iter_mut()
                            .zip(dots.par_chunks(w))
                            .enumerate()
                            .for_each(|(r, (s, row))| visit(s, q0 + r, c0, row));
                    }
                }
                Ok(())
            }
        }
    }
}

/// One query row's `(key, candidate id)` list from [`Compute::top_k`], ascending.
pub type Neighbours = Vec<(f32, u32)>;

impl<B: Backend> Compute<B> {
    /// Whether [`Compute::top_k`] reduces where the products run (the CUDA engine); elsewhere the
    /// callers fuse their own reduction into [`Compute::scan`] or [`Compute::scan_triangle`].
    pub fn reduces_on_device(&self) -> bool {
        #[cfg(feature = "cuda")]
        if let Engine::Cuda(_) = self.engine {
            return true;
        }
        false
    }

    /// Each query row's `k` smallest `(key, candidate id)`, ascending by key then id, where the
    /// products run: key `−q·c`, or `‖c‖² − 2·q·c` when `euclidean`; a candidate whose id is the
    /// query's own is skipped. `None` on engines that do not reduce on the device, or for a `k`
    /// the device kernels are not built for; the caller then scans.
    pub fn top_k(
        &self,
        q: Rows<'_>,
        q_ids: &[usize],
        c: Rows<'_>,
        c_ids: &[usize],
        euclidean: bool,
        k: usize,
    ) -> Result<Option<Vec<Neighbours>>, MineError> {
        if q.len() != q_ids.len() || c.len() != c_ids.len() || q.dim != c.dim {
            return Err(MineError::Compute(format!(
                "{} query ids for {} rows, {} candidate ids for {} rows",
                q_ids.len(),
                q.len(),
                c_ids.len(),
                c.len()
            )));
        }
        match &self.engine {
            #[cfg(feature = "cuda")]
            Engine::Cuda(m) if k <= super::cuda::TOP_K_MAX && !q.is_empty() && !c.is_empty() => {
                let id32 = |ids: &[usize]| -> Result<Vec<u32>, MineError> {
                    ids.iter()
                        .map(|&i| {
                            u32::try_from(i)
                                .ok()
                                .filter(|&v| v != u32::MAX)
                                .ok_or_else(|| {
                                    MineError::Compute(format!(
                                        "row id {i} above the GPU's u32 ids"
                                    ))
                                })
                        })
                        .collect()
                };
                let (qi, ci) = (id32(q_ids)?, id32(c_ids)?);
                let (mut qb, mut cb) = (Vec::new(), Vec::new());
                let dim = q.dim;
                let rows = m
                    .upload(c.block(0, c.len(), &mut cb), dim)
                    .map_err(gpu_err)?;
                // The exact graph searches every row against every row: one upload serves both.
                let queries = if q.same_rows(&c) {
                    None
                } else {
                    Some(
                        m.upload(q.block(0, q.len(), &mut qb), dim)
                            .map_err(gpu_err)?,
                    )
                };
                let found = m
                    .top_k(
                        queries.as_ref().unwrap_or(&rows),
                        &qi,
                        &rows,
                        &ci,
                        euclidean,
                        k,
                    )
                    .map_err(gpu_err)?;
                Ok(found.map(|flat| {
                    flat.chunks_exact(k)
                        .map(|row| row.iter().copied().filter(|e| e.1 != u32::MAX).collect())
                        .collect()
                }))
            }
            _ => {
                let _ = (euclidean, k);
                Ok(None)
            }
        }
    }
}

/// Rows of a row-major matrix: all of them, or the ones `pick` names, in its order.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    data: &'a [f32],
    dim: usize,
    pick: Option<&'a [usize]>,
}

impl<'a> Rows<'a> {
    /// Every row of `data`.
    pub fn all(data: &'a [f32], dim: usize) -> Self {
        Self {
            data,
            dim,
            pick: None,
        }
    }

    /// Rows `pick` of `data` (row indices), without copying them.
    pub fn pick(data: &'a [f32], dim: usize, pick: &'a [usize]) -> Self {
        Self {
            data,
            dim,
            pick: Some(pick),
        }
    }

    /// Whether both name the same rows of the same matrix, in the same order.
    pub fn same_rows(&self, other: &Rows<'_>) -> bool {
        std::ptr::eq(self.data, other.data)
            && self.dim == other.dim
            && match (self.pick, other.pick) {
                (None, None) => true,
                (Some(a), Some(b)) => std::ptr::eq(a, b) || a == b,
                _ => false,
            }
    }

    pub fn len(&self) -> usize {
        self.pick
            .map_or(self.data.len() / self.dim.max(1), <[usize]>::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn row(&self, i: usize) -> &'a [f32] {
        let r = self.pick.map_or(i, |p| p[i]);
        &self.data[r * self.dim..(r + 1) * self.dim]
    }

    /// Rows `start..end` contiguous: borrowed, or gathered into `buf`.
    fn block<'b>(&self, start: usize, end: usize, buf: &'b mut Vec<f32>) -> &'b [f32]
    where
        'a: 'b,
    {
        match self.pick {
            None => &self.data[start * self.dim..end * self.dim],
            Some(_) => {
                buf.clear();
                for i in start..end {
                    buf.extend_from_slice(self.row(i));
                }
                buf
            }
        }
    }

    /// `[dim, len]` row-major: the rows as columns, gathered and turned in one pass (in
    /// parallel over column bands). The GEMM's right operand is read fastest with unit stride
    /// along its columns; a row-major `[rows, dim]` matrix used as `bᵀ` made the kernel's packing
    /// cost twice its arithmetic.
    fn transposed(&self) -> Vec<f32> {
        let n = self.len();
        let mut out = vec![0f32; n * self.dim];
        if n == 0 {
            return out;
        }
        out.par_chunks_mut(16 * n).enumerate().for_each(|(t, o)| {
            let (d0, w) = (16 * t, o.len() / n);
            for r in 0..n {
                for (dd, &v) in self.row(r)[d0..d0 + w].iter().enumerate() {
                    o[dd * n + r] = v;
                }
            }
        });
        out
    }
}

impl<B: Backend> Compute<B> {
    /// Streams the upper triangle of `x · xᵀ` (blocks `(I, J)` with `J ≥ I`), for symmetric
    /// all-pairs work at half the products: `visit(acc, r0, c0, rows, cols, dots)` sees the
    /// `rows × cols` block (row-major) of rows `r0..` against rows `c0..`. Blocks are split into
    /// groups, one per thread, each with its own accumulator from `init`; the accumulators are
    /// returned (the caller merges them).
    pub fn scan_triangle<A: Send>(
        &self,
        x: &[f32],
        dim: usize,
        init: impl Fn() -> A + Sync,
        visit: impl Fn(&mut A, usize, usize, usize, usize, &[f32]) + Sync,
    ) -> Result<Vec<A>, MineError> {
        let n = x.len() / dim.max(1);
        match &self.engine {
            Engine::Host => {
                let bs = TRIANGLE_BLOCK;
                let nb = n.div_ceil(bs);
                let groups = rayon::current_num_threads().clamp(1, nb.max(1));
                Ok((0..groups)
                    .into_par_iter()
                    .map(|g| {
                        let mut acc = init();
                        let mut buf = vec![0f32; bs * bs];
                        // Interleaved row blocks balance the triangle's shrinking rows.
                        for bi in (g..nb).step_by(groups) {
                            let r0 = bi * bs;
                            let rows = bs.min(n - r0);
                            let a = View::dense(&x[r0 * dim..(r0 + rows) * dim], rows, dim);
                            for bj in bi..nb {
                                let c0 = bj * bs;
                                let cols = bs.min(n - c0);
                                // Square blocks run faster with this operand as given (a
                                // transposed copy measured 1.6× slower here, unlike the scan).
                                let b = View::dense(&x[c0 * dim..(c0 + cols) * dim], cols, dim);
                                matmul(&mut buf[..rows * cols], cols, a, b.t(), false, 1);
                                visit(&mut acc, r0, c0, rows, cols, &buf[..rows * cols]);
                            }
                        }
                        acc
                    })
                    .collect())
            }
            _ => {
                let bs = DEVICE_QUERY_BLOCK * 4;
                let mut acc = init();
                for r0 in (0..n).step_by(bs) {
                    let rows = bs.min(n - r0);
                    for c0 in (r0..n).step_by(bs) {
                        let cols = bs.min(n - c0);
                        let dots = self.dots(
                            &x[r0 * dim..(r0 + rows) * dim],
                            &x[c0 * dim..(c0 + cols) * dim],
                            dim,
                        )?;
                        visit(&mut acc, r0, c0, rows, cols, &dots);
                    }
                }
                Ok(vec![acc])
            }
        }
    }
}

/// Running accumulators of one host assignment task.
struct Acc {
    sums: Vec<f64>,
    counts: Vec<u64>,
}

impl Acc {
    fn new(k: usize, dim: usize) -> Self {
        Self {
            sums: vec![0.0; k * dim],
            counts: vec![0; k],
        }
    }

    fn merge(mut self, o: Acc) -> Acc {
        self.sums.iter_mut().zip(&o.sums).for_each(|(a, b)| *a += b);
        self.counts
            .iter_mut()
            .zip(&o.counts)
            .for_each(|(a, b)| *a += b);
        self
    }
}

/// The fused host assignment: per block of rows, one single-threaded GEMM against all centroids,
/// then argmin and the per-cluster sums while the block is hot.
fn host_nearest(x: &[f32], x_sq: &[f32], dim: usize, cen: &[f32]) -> Nearest {
    let n = x_sq.len();
    let k = cen.len() / dim;
    let cen_sq = sq_norms(cen, dim);
    let rows_per = (HOST_BLOCK_ELEMS / k).clamp(8, 512);
    let mut labels = vec![0u32; n];
    let mut sq_dist = vec![0f32; n];
    let cen_t = Rows::all(cen, dim).transposed();
    let cv = View::dense(&cen_t, dim, k);
    let acc = labels
        .par_chunks_mut(rows_per)
        .zip(sq_dist.par_chunks_mut(rows_per))
        .enumerate()
        .fold(
            || (Acc::new(k, dim), Vec::<f32>::new()),
            |(mut acc, mut buf), (b, (lab, sqd))| {
                let start = b * rows_per;
                let rows = lab.len();
                buf.resize(rows * k, 0.0);
                let xs = &x[start * dim..(start + rows) * dim];
                matmul(&mut buf, k, View::dense(xs, rows, dim), cv, false, 1);
                for r in 0..rows {
                    let dots = &buf[r * k..(r + 1) * k];
                    let (mut best, mut best_j) = (f32::INFINITY, 0usize);
                    for (j, (&dot, &cs)) in dots.iter().zip(&cen_sq).enumerate() {
                        let v = cs - 2.0 * dot;
                        if v < best {
                            (best, best_j) = (v, j);
                        }
                    }
                    lab[r] = best_j as u32;
                    sqd[r] = (x_sq[start + r] + best).max(0.0);
                    acc.counts[best_j] += 1;
                    let s = &mut acc.sums[best_j * dim..(best_j + 1) * dim];
                    for (a, &v) in s.iter_mut().zip(&xs[r * dim..(r + 1) * dim]) {
                        *a += v as f64;
                    }
                }
                (acc, buf)
            },
        )
        .map(|(acc, _)| acc)
        .reduce(|| Acc::new(k, dim), Acc::merge);
    Nearest {
        labels,
        sq_dist,
        sums: acc.sums.iter().map(|&v| v as f32).collect(),
        counts: acc.counts.iter().map(|&c| c as f32).collect(),
    }
}

/// The Burn assignment: `‖x‖² − 2 x·c + ‖c‖²` per chunk, argmin and scatter-add on the device.
fn device_nearest<B: Backend>(
    device: &B::Device,
    chunks: &[(Tensor<B, 2>, Tensor<B, 2>)],
    centroids: &[f32],
    k: usize,
    dim: usize,
) -> Result<Nearest, MineError> {
    let cen = Compute::<B>::matrix(device, centroids, k, dim);
    let cen_sq = cen.clone().powi_scalar(2).sum_dim(1).reshape([1, k]);
    let cen_t = cen.transpose();
    let mut sums = Tensor::<B, 2>::zeros([k, dim], device);
    let mut counts = Tensor::<B, 1>::zeros([k], device);
    let (mut labels, mut sq_dist) = (Vec::new(), Vec::new());
    for (x, x_sq) in chunks {
        let rows = x.dims()[0];
        let d = x_sq.clone() - x.clone().matmul(cen_t.clone()).mul_scalar(2.0) + cen_sq.clone();
        let (min, idx) = d.min_dim_with_indices(1);
        let idx: Tensor<B, 1, Int> = idx.reshape([rows]);
        sums = sums.select_assign(0, idx.clone(), x.clone(), IndexingUpdateOp::Add);
        counts = counts.select_assign(
            0,
            idx.clone(),
            Tensor::ones([rows], device),
            IndexingUpdateOp::Add,
        );
        labels.extend(host_usize(idx).into_iter().map(|l| l as u32));
        sq_dist.extend(host_f32(min.clamp_min(0.0))?);
    }
    Ok(Nearest {
        labels,
        sq_dist,
        sums: host_f32(sums)?,
        counts: host_f32(counts)?,
    })
}

#[cfg(feature = "cuda")]
fn gpu_err(e: crate::gpu::CudaError) -> MineError {
    MineError::Compute(e.to_string())
}

/// A float tensor's values on the host.
pub fn host_f32<const D: usize, B: Backend>(t: Tensor<B, D>) -> Result<Vec<f32>, MineError> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| MineError::Compute(format!("{e:?}")))
}

/// An int tensor's values on the host.
pub fn host_usize<const D: usize, B: Backend>(t: Tensor<B, D, Int>) -> Vec<usize> {
    t.into_data()
        .iter::<i64>()
        .map(|v| v.max(0) as usize)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n * d).map(|_| rng.random::<f32>() - 0.5).collect()
    }

    fn engines() -> [Compute<Cpu>; 2] {
        [Compute::host(), Compute::new(Default::default())]
    }

    #[test]
    fn dots_match_a_hand_computed_product_on_both_engines() {
        let q = [1.0, 2.0, 3.0, 4.0]; // 2 × 2
        let k = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]; // 3 × 2
        for c in engines() {
            assert_eq!(
                c.dots(&q, &k, 2).unwrap(),
                vec![1.0, 2.0, 3.0, 3.0, 4.0, 7.0]
            );
            let r = c.resident(&k, 2).unwrap();
            assert_eq!(
                c.dots_against(&q, &r).unwrap(),
                vec![1.0, 2.0, 3.0, 3.0, 4.0, 7.0]
            );
        }
    }

    #[test]
    fn host_assignment_matches_the_device_reference_and_a_brute_force() {
        // 1,100 rows over several blocks, k = 37 (not a multiple of any kernel width).
        let (n, d, k) = (1100, 19, 37);
        let x = random(n, d, 1);
        let cen = random(k, d, 2);
        let [h, dev] = engines();
        let a = h.nearest(&h.resident(&x, d).unwrap(), &cen).unwrap();
        let b = dev.nearest(&dev.resident(&x, d).unwrap(), &cen).unwrap();
        let mut sums = vec![0f64; k * d];
        for i in 0..n {
            let row = &x[i * d..(i + 1) * d];
            let (best, j) = (0..k)
                .map(|j| {
                    let c = &cen[j * d..(j + 1) * d];
                    (
                        row.iter().zip(c).map(|(a, b)| (a - b).powi(2)).sum::<f32>(),
                        j,
                    )
                })
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .unwrap();
            assert_eq!(a.labels[i] as usize, j, "row {i}");
            assert_eq!(b.labels[i] as usize, j, "row {i}");
            assert!((a.sq_dist[i] - best).abs() < 1e-4, "row {i}");
            for e in 0..d {
                sums[j * d + e] += row[e] as f64;
            }
        }
        assert_eq!(a.counts, b.counts);
        assert_eq!(a.counts.iter().sum::<f32>(), n as f32);
        for (e, s) in sums.iter().enumerate() {
            assert!((a.sums[e] as f64 - s).abs() < 1e-3);
            assert!((b.sums[e] - a.sums[e]).abs() < 1e-3);
        }
    }

    #[test]
    fn scan_visits_every_query_candidate_pair_once_with_its_dot() {
        let (nq, nc, d) = (150, 2100, 7);
        let q = random(nq, d, 3);
        let c = random(nc, d, 4);
        for e in engines() {
            // Per query row: (sum of dots, count of candidates seen).
            let mut st = vec![(0f64, 0usize, usize::MAX); nq];
            e.scan(
                Rows::all(&q, d),
                Rows::all(&c, d),
                &mut st,
                |s, qi, c0, dots| {
                    s.0 += dots.iter().map(|&v| v as f64).sum::<f64>();
                    s.1 += dots.len();
                    s.2 = qi;
                    assert!(c0 + dots.len() <= nc);
                },
            )
            .unwrap();
            for (i, s) in st.iter().enumerate() {
                let want: f64 = (0..nc)
                    .map(|j| {
                        (0..d)
                            .map(|t| (q[i * d + t] * c[j * d + t]) as f64)
                            .sum::<f64>()
                    })
                    .sum();
                assert_eq!(s.1, nc);
                assert_eq!(s.2, i);
                assert!((s.0 - want).abs() < 1e-2, "{} vs {want}", s.0);
            }
        }
    }

    #[test]
    fn picked_rows_scan_like_the_gathered_matrix() {
        let (n, d) = (300, 9);
        let x = random(n, d, 8);
        let qi: Vec<usize> = (0..n).rev().step_by(3).collect();
        let ci: Vec<usize> = (0..n).step_by(2).chain([7, 7]).collect();
        let gather = |idx: &[usize]| -> Vec<f32> {
            idx.iter()
                .flat_map(|&i| x[i * d..(i + 1) * d].to_vec())
                .collect()
        };
        let (gq, gc) = (gather(&qi), gather(&ci));
        for e in engines() {
            let run = |q: Rows<'_>, c: Rows<'_>| {
                let mut st = vec![vec![0f32; ci.len()]; qi.len()];
                e.scan(q, c, &mut st, |s, _, c0, dots| {
                    s[c0..c0 + dots.len()].copy_from_slice(dots)
                })
                .unwrap();
                st
            };
            let picked = run(Rows::pick(&x, d, &qi), Rows::pick(&x, d, &ci));
            let dense = run(Rows::all(&gq, d), Rows::all(&gc, d));
            assert_eq!(picked, dense);
            assert_eq!(
                Rows::pick(&x, d, &ci).transposed(),
                Rows::all(&gc, d).transposed()
            );
        }
    }

    #[test]
    fn the_triangle_scan_covers_each_unordered_pair_once() {
        let (n, d) = (700, 5);
        let x = random(n, d, 6);
        for e in engines() {
            let accs = e
                .scan_triangle(
                    &x,
                    d,
                    || vec![0u32; n * n],
                    |seen, r0, c0, rows, cols, dots| {
                        assert_eq!(dots.len(), rows * cols);
                        for r in 0..rows {
                            for c in 0..cols {
                                let (i, j) = (r0 + r, c0 + c);
                                let want: f32 = (0..d).map(|t| x[i * d + t] * x[j * d + t]).sum();
                                assert!((dots[r * cols + c] - want).abs() < 1e-4);
                                seen[i.min(j) * n + i.max(j)] += 1;
                            }
                        }
                    },
                )
                .unwrap();
            let bs = if e.is_host() {
                TRIANGLE_BLOCK
            } else {
                DEVICE_QUERY_BLOCK * 4
            };
            for i in 0..n {
                for j in i..n {
                    let times: u32 = accs.iter().map(|s| s[i * n + j]).sum();
                    // Off-diagonal blocks hold each pair once; a diagonal block holds (i, j)
                    // and (j, i).
                    let want = if i != j && i / bs == j / bs { 2 } else { 1 };
                    assert_eq!(times, want, "pair ({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn mismatched_engines_and_state_counts_are_errors() {
        let x = random(4, 2, 5);
        let [h, dev] = engines();
        let r = dev.resident(&x, 2).unwrap();
        assert!(h.nearest(&r, &x).is_err());
        let mut st = vec![0u8; 3];
        let all = Rows::all(&x, 2);
        assert!(h.scan(all, all, &mut st, |_, _, _, _| {}).is_err());
        assert!(
            h.scan(all, Rows::all(&x, 4), &mut [0u8; 4], |_, _, _, _| {})
                .is_err()
        );
    }
}
