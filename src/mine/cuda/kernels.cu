// Mining kernels, compiled at load time by NVRTC (no headers: NVRTC ships none by default).
// The products themselves are cuBLASLt GEMMs (exact FP32); these kernels reduce their output on
// the GPU so only labels, distances and top-k lists cross the bus.
//
// Orders are total and match the host engine: the argmin keeps the lowest centroid index among
// equal keys, the top-k orders by (key, candidate id).

#define INF __int_as_float(0x7f800000)
#define NO_ID 0xffffffffu

// Squared L2 norm of each row: one warp per row.
extern "C" __global__ void sq_norms(const float* __restrict__ x, int rows, int dim,
                                    float* __restrict__ out) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= rows) return;
    const float* r = x + (size_t)warp * dim;
    float s = 0.f;
    for (int j = lane; j < dim; j += 32) s = fmaf(r[j], r[j], s);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) out[warp] = s;
}

// Nearest centroid of each row from its dots with the k centroids: key ‖c‖² − 2·x·c, lowest
// index among equal keys; the squared distance ‖x‖² + key clamped at 0. One warp per row.
extern "C" __global__ void assign(const float* __restrict__ dots, int rows, int k,
                                  const float* __restrict__ cen_sq,
                                  const float* __restrict__ x_sq, unsigned* __restrict__ labels,
                                  float* __restrict__ sq_dist) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= rows) return;
    const float* d = dots + (size_t)warp * k;
    float best = INF;
    int at = 0x7fffffff;
    for (int j = lane; j < k; j += 32) {
        float v = cen_sq[j] - 2.f * d[j];
        if (v < best) { best = v; at = j; }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ob = __shfl_xor_sync(0xffffffffu, best, o);
        int oa = __shfl_xor_sync(0xffffffffu, at, o);
        if (ob < best || (ob == best && oa < at)) { best = ob; at = oa; }
    }
    if (lane == 0) {
        // Every key NaN (a NaN centroid): the first centroid, distance NaN, as the host does.
        labels[warp] = at == 0x7fffffff ? 0u : (unsigned)at;
        sq_dist[warp] = at == 0x7fffffff ? __int_as_float(0x7fc00000) : fmaxf(x_sq[warp] + best, 0.f);
    }
}

// Per-cluster sums of the rows in `order` (rows grouped by cluster, cluster c at
// offsets[c]..offsets[c+1]): one block per cluster, threads over the columns, f64 sums in a fixed
// order (deterministic, and as exact as the host's f64 accumulators).
extern "C" __global__ void cluster_sums(const float* __restrict__ x, int dim,
                                        const unsigned* __restrict__ order,
                                        const unsigned* __restrict__ offsets,
                                        float* __restrict__ sums) {
    int c = blockIdx.x;
    unsigned from = offsets[c], to = offsets[c + 1];
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        // Four independent sums keep four loads in flight (the loop is latency-bound).
        double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
        unsigned i = from;
        for (; i + 4 <= to; i += 4) {
            s0 += (double)x[(size_t)order[i] * dim + j];
            s1 += (double)x[(size_t)order[i + 1] * dim + j];
            s2 += (double)x[(size_t)order[i + 2] * dim + j];
            s3 += (double)x[(size_t)order[i + 3] * dim + j];
        }
        for (; i < to; ++i) s0 += (double)x[(size_t)order[i] * dim + j];
        sums[(size_t)c * dim + j] = (float)((s0 + s1) + (s2 + s3));
    }
}

__device__ __forceinline__ bool before(float ka, unsigned ia, float kb, unsigned ib) {
    return ka < kb || (ka == kb && ia < ib);
}

// The warp's smallest (key, id, owning thread) in every lane.
__device__ __forceinline__ void warp_min(float& bk, unsigned& bi, int& bt) {
    for (int o = 16; o > 0; o >>= 1) {
        float ok = __shfl_xor_sync(0xffffffffu, bk, o);
        unsigned oi = __shfl_xor_sync(0xffffffffu, bi, o);
        int ot = __shfl_xor_sync(0xffffffffu, bt, o);
        if (before(ok, oi, bk, bi) || (ok == bk && oi == bi && ot < bt)) {
            bk = ok; bi = oi; bt = ot;
        }
    }
}

// Each query row's k smallest (key, id) among `nc` candidates, from the row's dots: key −dot
// (cosine; `csq` null) or csq[j] − 2·dot (Euclidean), the candidate whose id is the query's own
// skipped. One block per query row of 4096 / K threads; each thread keeps a sorted list of K in
// registers over a strided share of the candidates, then the block merges the lists k times by
// argmin. k ≤ K; missing entries are (+∞, NO_ID).
template <int K>
__device__ void top_k(const float* __restrict__ dots, int nc, const float* __restrict__ csq,
                      const unsigned* __restrict__ cid, const unsigned* __restrict__ qid, int k,
                      float* __restrict__ out_key, unsigned* __restrict__ out_id) {
    constexpr int T = 4096 / K;
    __shared__ float sk[T * K];
    __shared__ unsigned si[T * K];
    __shared__ float wk[32];
    __shared__ unsigned wi[32];
    __shared__ int wt[32];
    int row = blockIdx.x, tid = threadIdx.x;
    float key[K];
    unsigned id[K];
#pragma unroll
    for (int i = 0; i < K; ++i) { key[i] = INF; id[i] = NO_ID; }
    const float* d = dots + (size_t)row * nc;
    unsigned self = qid[row];
    for (int j = tid; j < nc; j += T) {
        float v = csq ? csq[j] - 2.f * d[j] : -d[j];
        unsigned c = cid[j];
        if (c == self || !before(v, c, key[K - 1], id[K - 1])) continue;
        // Insert in order: the displaced entries move down one place, the last falls off.
#pragma unroll
        for (int i = 0; i < K; ++i) {
            if (before(v, c, key[i], id[i])) {
                float tk = key[i]; unsigned ti = id[i];
                key[i] = v; id[i] = c;
                v = tk; c = ti;
            }
        }
    }
#pragma unroll
    for (int i = 0; i < K; ++i) { sk[tid * K + i] = key[i]; si[tid * K + i] = id[i]; }
    __syncthreads();
    int head = 0, lane = tid & 31, warp = tid >> 5, warps = T / 32;
    for (int r = 0; r < k; ++r) {
        float bk = head < K ? sk[tid * K + head] : INF;
        unsigned bi = head < K ? si[tid * K + head] : NO_ID;
        int bt = tid;
        warp_min(bk, bi, bt);
        if (lane == 0) { wk[warp] = bk; wi[warp] = bi; wt[warp] = bt; }
        __syncthreads();
        if (warp == 0) {
            bk = lane < warps ? wk[lane] : INF;
            bi = lane < warps ? wi[lane] : NO_ID;
            bt = lane < warps ? wt[lane] : 0x7fffffff;
            warp_min(bk, bi, bt);
            if (lane == 0) {
                wk[0] = bk; wi[0] = bi; wt[0] = bt;
                out_key[(size_t)row * k + r] = bk;
                out_id[(size_t)row * k + r] = bi;
            }
        }
        __syncthreads();
        if (tid == wt[0]) ++head;
        __syncthreads();
    }
}

#define TOP_K(K)                                                                              \
    extern "C" __global__ void __launch_bounds__(4096 / K)                                    \
        top_k_##K(const float* dots, int nc, const float* csq, const unsigned* cid,           \
                  const unsigned* qid, int k, float* out_key, unsigned* out_id) {             \
        top_k<K>(dots, nc, csq, cid, qid, k, out_key, out_id);                                \
    }
TOP_K(16)
TOP_K(32)
TOP_K(64)
