// The CUDA engine's own kernels (everything that is not a GEMM), compiled at run time by NVRTC.
// No headers: bf16 values are `unsigned short` bit patterns, converted with round-to-nearest-even,
// and the tensor-core product is inline PTX (mma.sync m16n8k16, sm_80 and later).

typedef unsigned short bf16;
typedef unsigned int u32;
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16 v) { return __uint_as_float(((u32)v) << 16); }

__device__ __forceinline__ bf16 bf16_of(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u);  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(bf16* p, float v) { *p = bf16_of(v); }

// Two bf16 in one register, `lo` at the lower address (the mma operand layout).
__device__ __forceinline__ u32 pack2(float lo, float hi) {
    return (u32)bf16_of(lo) | ((u32)bf16_of(hi) << 16);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float silu(float x) { return x / (1.0f + __expf(-x)); }
__device__ __forceinline__ float act(float x, int kind) { return kind == 0 ? gelu(x) : silu(x); }

// ---- patch embedding -------------------------------------------------------------------------

// [n, c, h, w] pixels → [n·(h/p)·(w/p), c·p·p] rows: each patch's receptive field, conv order.
template <typename T>
__device__ void im2col(const float* __restrict__ px, T* __restrict__ out, int n, int c, int h,
                       int w, int p) {
    int wp = w / p, np = (h / p) * wp, k = c * p * p;
    long total = (long)n * np * k;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total;
         i += (long)gridDim.x * blockDim.x) {
        int col = (int)(i % k);
        long row = i / k;
        int patch = (int)(row % np), img = (int)(row / np);
        int ch = col / (p * p), ky = (col / p) % p, kx = col % p;
        int y = (patch / wp) * p + ky, x = (patch % wp) * p + kx;
        store(out + i, px[(((long)img * c + ch) * h + y) * w + x]);
    }
}
extern "C" __global__ void im2col_f32(const float* px, float* out, int n, int c, int h, int w, int p) { im2col(px, out, n, c, h, w, p); }
extern "C" __global__ void im2col_bf16(const float* px, bf16* out, int n, int c, int h, int w, int p) { im2col(px, out, n, c, h, w, p); }

// x[n, t, d] = CLS, registers (`prefix` rows shared by every image), then the patch rows.
extern "C" __global__ void assemble(const float* __restrict__ patches,
                                    const float* __restrict__ prefix_tokens, float* __restrict__ x,
                                    int n, int np, int prefix, int d) {
    int t = prefix + np;
    long total = (long)n * t * d;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total;
         i += (long)gridDim.x * blockDim.x) {
        int col = (int)(i % d);
        long row = i / d;
        int tok = (int)(row % t), img = (int)(row / t);
        x[i] = tok < prefix ? prefix_tokens[tok * d + col]
                            : patches[((long)img * np + tok - prefix) * d + col];
    }
}

// ---- LayerNorm: one warp per row, the row held in registers (W values per lane), two exact passes

template <typename T, int W>
__device__ void layer_norm(const float* __restrict__ x, const float* __restrict__ gamma,
                           const float* __restrict__ beta, T* __restrict__ out, int rows, int d,
                           float eps) {
    int warps = blockDim.x >> 5, lane = threadIdx.x & 31;
    int row = blockIdx.x * warps + (threadIdx.x >> 5);
    if (row >= rows) return;
    const float* r = x + (long)row * d;
    float v[W];
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < W; j++) {
        int c = lane + 32 * j;
        v[j] = c < d ? r[c] : 0.f;
        s += v[j];
    }
    float mean = warp_sum(s) / d;
    float q = 0.f;
#pragma unroll
    for (int j = 0; j < W; j++) {
        int c = lane + 32 * j;
        float e = c < d ? v[j] - mean : 0.f;
        q += e * e;
    }
    float inv = rsqrtf(warp_sum(q) / d + eps);
    T* o = out + (long)row * d;
#pragma unroll
    for (int j = 0; j < W; j++) {
        int c = lane + 32 * j;
        if (c < d) store(o + c, (v[j] - mean) * inv * gamma[c] + beta[c]);
    }
}
#define LAYER_NORM(W) \
    extern "C" __global__ void layer_norm_f32_w##W(const float* x, const float* g, const float* b, float* out, int rows, int d, float eps) { layer_norm<float, W>(x, g, b, out, rows, d, eps); } \
    extern "C" __global__ void layer_norm_bf16_w##W(const float* x, const float* g, const float* b, bf16* out, int rows, int d, float eps) { layer_norm<bf16, W>(x, g, b, out, rows, d, eps); }
LAYER_NORM(8)
LAYER_NORM(16)
LAYER_NORM(32)
LAYER_NORM(64)

// ---- MLP activations (the bias is already added by the GEMM epilogue) -----------------------

template <typename T>
__device__ void activate(T* __restrict__ x, long count, int kind) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < count;
         i += (long)gridDim.x * blockDim.x)
        store(x + i, act(to_f32(x[i]), kind));
}
extern "C" __global__ void activate_f32(float* x, long count, int kind) { activate(x, count, kind); }
extern "C" __global__ void activate_bf16(bf16* x, long count, int kind) { activate(x, count, kind); }

// out[r, j] = act(in[r, j]) · in[r, inter + j]: gate | up side by side.
template <typename T>
__device__ void gated(const T* __restrict__ in, T* __restrict__ out, long rows, int inter,
                      int kind) {
    long total = rows * inter;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total;
         i += (long)gridDim.x * blockDim.x) {
        long r = i / inter;
        int j = (int)(i % inter);
        const T* row = in + r * 2 * inter;
        store(out + i, act(to_f32(row[j]), kind) * to_f32(row[inter + j]));
    }
}
extern "C" __global__ void gated_f32(const float* in, float* out, long rows, int inter, int kind) { gated(in, out, rows, inter, kind); }
extern "C" __global__ void gated_bf16(const bf16* in, bf16* out, long rows, int inter, int kind) { gated(in, out, rows, inter, kind); }

// ---- pooling: out[img] = CLS row | mean of the patch rows, of the final normed tokens --------

extern "C" __global__ void pool(const float* __restrict__ y, float* __restrict__ out, int t,
                                int prefix, int d) {
    int img = blockIdx.x;
    const float* base = y + (long)img * t * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float s = 0.f;
        for (int tok = prefix; tok < t; tok++) s += base[(long)tok * d + c];
        out[(long)img * 2 * d + c] = base[c];
        out[(long)img * 2 * d + d + c] = s / (float)(t - prefix > 0 ? t - prefix : 1);
    }
}

// ---- attention ------------------------------------------------------------------------------
// qkv: [n, t, 3d] rows = q (already scaled by 1/√hd) | k | v, heads of HD contiguous inside each.
// RoPE rotates q and k of the patch tokens (index ≥ prefix) with cos/sin [t − prefix, HD]:
//   x₁' = x₁·cos₁ − x₂·sin₁,  x₂' = x₂·cos₂ + x₁·sin₂   (halves of each head).
// out: [n, t, d], the heads merged back in place (the layout the output projection reads).

template <typename T, int HD>
__device__ __forceinline__ void rope_pair(const T* src, const float* cos, const float* sin,
                                          int tok, int prefix, int c, float& a, float& b) {
    a = to_f32(src[c]);
    b = to_f32(src[c + HD / 2]);
    if (tok >= prefix) {
        const float* cs = cos + (long)(tok - prefix) * HD;
        const float* sn = sin + (long)(tok - prefix) * HD;
        float u = a, v = b;
        a = u * cs[c] - v * sn[c];
        b = v * cs[c + HD / 2] + u * sn[c + HD / 2];
    }
}

// f32: one thread per query, keys streamed through shared memory in tiles, online softmax.
#define F32_QUERIES 64
#define F32_KEYS 32
template <int HD>
__device__ void attention_f32(const float* __restrict__ qkv, const float* __restrict__ cos,
                              const float* __restrict__ sin, float* __restrict__ out, int t,
                              int d, int prefix) {
    __shared__ float ks[F32_KEYS][HD];
    __shared__ float vs[F32_KEYS][HD];
    int head = blockIdx.y, img = blockIdx.z;
    int qi = blockIdx.x * F32_QUERIES + threadIdx.x;
    const float* base = qkv + (long)img * t * 3 * d;
    float q[HD], o[HD];
    bool live = qi < t;
    if (live) {
        const float* src = base + (long)qi * 3 * d + head * HD;
#pragma unroll
        for (int c = 0; c < HD / 2; c++) rope_pair<float, HD>(src, cos, sin, qi, prefix, c, q[c], q[c + HD / 2]);
    }
#pragma unroll
    for (int c = 0; c < HD; c++) o[c] = 0.f;
    float m = NEG_INF, l = 0.f;
    for (int k0 = 0; k0 < t; k0 += F32_KEYS) {
        __syncthreads();
        for (int i = threadIdx.x; i < F32_KEYS * (HD / 2); i += blockDim.x) {
            int kr = i / (HD / 2), c = i % (HD / 2), tok = k0 + kr;
            float a = 0.f, b = 0.f, va = 0.f, vb = 0.f;
            if (tok < t) {
                const float* row = base + (long)tok * 3 * d;
                rope_pair<float, HD>(row + d + head * HD, cos, sin, tok, prefix, c, a, b);
                va = row[2 * d + head * HD + c];
                vb = row[2 * d + head * HD + c + HD / 2];
            }
            ks[kr][c] = a;
            ks[kr][c + HD / 2] = b;
            vs[kr][c] = va;
            vs[kr][c + HD / 2] = vb;
        }
        __syncthreads();
        int kn = min(F32_KEYS, t - k0);
        if (live) {
            for (int j = 0; j < kn; j++) {
                float s = 0.f;
#pragma unroll
                for (int c = 0; c < HD; c++) s += q[c] * ks[j][c];
                float mn = fmaxf(m, s);
                float corr = expf(m - mn), p = expf(s - mn);
                l = l * corr + p;
#pragma unroll
                for (int c = 0; c < HD; c++) o[c] = o[c] * corr + p * vs[j][c];
                m = mn;
            }
        }
    }
    if (live) {
        float* dst = out + ((long)img * t + qi) * d + head * HD;
        float inv = 1.f / l;
#pragma unroll
        for (int c = 0; c < HD; c++) dst[c] = o[c] * inv;
    }
}
extern "C" __global__ void attention_f32_hd16(const float* qkv, const float* c, const float* s, float* out, int t, int d, int prefix) { attention_f32<16>(qkv, c, s, out, t, d, prefix); }
extern "C" __global__ void attention_f32_hd32(const float* qkv, const float* c, const float* s, float* out, int t, int d, int prefix) { attention_f32<32>(qkv, c, s, out, t, d, prefix); }
extern "C" __global__ void attention_f32_hd64(const float* qkv, const float* c, const float* s, float* out, int t, int d, int prefix) { attention_f32<64>(qkv, c, s, out, t, d, prefix); }

// bf16: flash-style on tensor cores. A block of 4 warps takes 64 queries of one (image, head); each
// warp owns 16 query rows. Keys and values stream through shared memory 64 at a time; S = q·kᵀ and
// O += P·v are mma.sync m16n8k16 (bf16 in, f32 accumulate); the softmax runs on the S fragments in
// registers with a running max and sum, so nothing of size t × t is ever written.
#define BQ 64
#define BK 64

__device__ __forceinline__ void mma_bf16(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ u32 ld2(const bf16* p) { return *(const u32*)p; }

template <int HD>
__device__ void attention_bf16(const bf16* __restrict__ qkv, const float* __restrict__ cos,
                               const float* __restrict__ sin, bf16* __restrict__ out, int t,
                               int d, int prefix) {
    constexpr int LD = HD + 8;  // padded rows: fewer bank conflicts, 4-byte aligned pairs
    __shared__ __align__(16) bf16 qs[BQ][LD];
    __shared__ __align__(16) bf16 ks[BK][LD];
    __shared__ __align__(16) bf16 vt[HD][BK + 8];  // v transposed: [dim][key]
    int head = blockIdx.y, img = blockIdx.z, q0 = blockIdx.x * BQ;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int g = lane >> 2, tg = lane & 3;
    const bf16* base = qkv + (long)img * t * 3 * d;

    for (int i = threadIdx.x; i < BQ * (HD / 2); i += blockDim.x) {
        int r = i / (HD / 2), c = i % (HD / 2), tok = q0 + r;
        float a = 0.f, b = 0.f;
        if (tok < t) rope_pair<bf16, HD>(base + (long)tok * 3 * d + head * HD, cos, sin, tok, prefix, c, a, b);
        qs[r][c] = bf16_of(a);
        qs[r][c + HD / 2] = bf16_of(b);
    }
    __syncthreads();
    constexpr int KS = HD / 16;  // k-steps over the head dimension
    u32 qa[KS][4];
    int qr = warp * 16;
#pragma unroll
    for (int kk = 0; kk < KS; kk++) {
        qa[kk][0] = ld2(&qs[qr + g][kk * 16 + 2 * tg]);
        qa[kk][1] = ld2(&qs[qr + g + 8][kk * 16 + 2 * tg]);
        qa[kk][2] = ld2(&qs[qr + g][kk * 16 + 2 * tg + 8]);
        qa[kk][3] = ld2(&qs[qr + g + 8][kk * 16 + 2 * tg + 8]);
    }
    constexpr int DN = HD / 8;  // n-tiles of the output
    float o[DN][4];
#pragma unroll
    for (int j = 0; j < DN; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;
    const float LOG2E = 1.4426950408889634f;

    for (int k0 = 0; k0 < t; k0 += BK) {
        __syncthreads();
        for (int i = threadIdx.x; i < BK * (HD / 2); i += blockDim.x) {
            int r = i / (HD / 2), c = i % (HD / 2), tok = k0 + r;
            float a = 0.f, b = 0.f, va = 0.f, vb = 0.f;
            if (tok < t) {
                const bf16* row = base + (long)tok * 3 * d;
                rope_pair<bf16, HD>(row + d + head * HD, cos, sin, tok, prefix, c, a, b);
                va = to_f32(row[2 * d + head * HD + c]);
                vb = to_f32(row[2 * d + head * HD + c + HD / 2]);
            }
            ks[r][c] = bf16_of(a);
            ks[r][c + HD / 2] = bf16_of(b);
            vt[c][r] = bf16_of(va);
            vt[c + HD / 2][r] = bf16_of(vb);
        }
        __syncthreads();
        // S = q·kᵀ for 16 rows × 64 keys: 8 n-tiles of 8 keys.
        float s[BK / 8][4];
#pragma unroll
        for (int nt = 0; nt < BK / 8; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < KS; kk++) {
                u32 b0 = ld2(&ks[nt * 8 + g][kk * 16 + 2 * tg]);
                u32 b1 = ld2(&ks[nt * 8 + g][kk * 16 + 2 * tg + 8]);
                mma_bf16(s[nt], qa[kk], b0, b1);
            }
        }
        // Online softmax, base 2; keys past t are masked.
        float mx0 = m0, mx1 = m1;
#pragma unroll
        for (int nt = 0; nt < BK / 8; nt++) {
            int key = k0 + nt * 8 + 2 * tg;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                bool valid = key + (e & 1) < t;
                s[nt][e] = valid ? s[nt][e] * LOG2E : NEG_INF;
            }
            mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
            mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        float c0 = exp2f(m0 - mx0), c1 = exp2f(m1 - mx1);
        m0 = mx0;
        m1 = mx1;
        float r0 = 0.f, r1 = 0.f;
#pragma unroll
        for (int nt = 0; nt < BK / 8; nt++) {
            s[nt][0] = exp2f(s[nt][0] - m0);
            s[nt][1] = exp2f(s[nt][1] - m0);
            s[nt][2] = exp2f(s[nt][2] - m1);
            s[nt][3] = exp2f(s[nt][3] - m1);
            r0 += s[nt][0] + s[nt][1];
            r1 += s[nt][2] + s[nt][3];
        }
        l0 = l0 * c0 + r0;
        l1 = l1 * c1 + r1;
#pragma unroll
        for (int j = 0; j < DN; j++) {
            o[j][0] *= c0;
            o[j][1] *= c0;
            o[j][2] *= c1;
            o[j][3] *= c1;
        }
        // O += P·v: the S accumulators are already the A-operand layout, two n-tiles per k-step.
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            u32 pa[4] = {pack2(s[2 * kk][0], s[2 * kk][1]), pack2(s[2 * kk][2], s[2 * kk][3]),
                         pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                         pack2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int j = 0; j < DN; j++) {
                u32 b0 = ld2(&vt[j * 8 + g][kk * 16 + 2 * tg]);
                u32 b1 = ld2(&vt[j * 8 + g][kk * 16 + 2 * tg + 8]);
                mma_bf16(o[j], pa, b0, b1);
            }
        }
    }
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    int row0 = q0 + qr + g, row1 = row0 + 8;
    float i0 = 1.f / l0, i1 = 1.f / l1;
#pragma unroll
    for (int j = 0; j < DN; j++) {
        int c = head * HD + j * 8 + 2 * tg;
        if (row0 < t) *(u32*)(out + ((long)img * t + row0) * d + c) = pack2(o[j][0] * i0, o[j][1] * i0);
        if (row1 < t) *(u32*)(out + ((long)img * t + row1) * d + c) = pack2(o[j][2] * i1, o[j][3] * i1);
    }
}
extern "C" __global__ void __launch_bounds__(128) attention_bf16_hd16(const bf16* qkv, const float* c, const float* s, bf16* out, int t, int d, int prefix) { attention_bf16<16>(qkv, c, s, out, t, d, prefix); }
extern "C" __global__ void __launch_bounds__(128) attention_bf16_hd32(const bf16* qkv, const float* c, const float* s, bf16* out, int t, int d, int prefix) { attention_bf16<32>(qkv, c, s, out, t, d, prefix); }
extern "C" __global__ void __launch_bounds__(128) attention_bf16_hd64(const bf16* qkv, const float* c, const float* s, bf16* out, int t, int d, int prefix) { attention_bf16<64>(qkv, c, s, out, t, d, prefix); }
