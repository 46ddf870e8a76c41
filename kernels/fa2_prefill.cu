/* fa2_prefill.cu: opt-in prefill attention (fast.cuh; PHI3_CUDA_FAST=1), the
 * FlashAttention-2 scheme on mma.sync m16n8k16 (fp16 operands, float32 accumulation).
 * Compiled, not yet run on a GPU.
 *
 * A block of 4 warps owns 64 queries of one head (16 per warp) and walks 64-key tiles of
 * the cache from the window start (or 0) to its last query. Q is read once into registers
 * (ldmatrix); K and V tiles are double-buffered in shared memory with cp.async (the next
 * tile loads while this one is computed). S = Q K^T, the online softmax and O += P V stay
 * in registers: the S accumulators of two adjacent 8-key tiles are exactly the A fragment
 * of the P V product. Causal mask, sliding window, grouped-query heads as kern_attn_prefill.
 * Blocks with the most keys (the last queries) are scheduled first. */
#include "kernels/fast.cuh"
#include <math.h>

#define F2_BM 64                 /* queries per block */
#define F2_BN 64                 /* keys per tile */
#define F2_THREADS 128

template <int D>
struct F2Layout {
    static constexpr int LD = D + 8;                     /* halves per row: 16-byte pad */
    static constexpr size_t Q = 0;
    static constexpr size_t K = Q + (size_t)F2_BM * LD * 2;
    static constexpr size_t V = K + (size_t)2 * F2_BN * LD * 2;
    static constexpr size_t BYTES = V + (size_t)2 * F2_BN * LD * 2;
};

static __device__ __forceinline__ unsigned smem_u32(const void *p)
{
    return (unsigned)__cvta_generic_to_shared(p);
}

/* 16 bytes global -> shared, asynchronously; src_bytes 0 fills zeros (reads nothing). */
static __device__ __forceinline__ void cp_async16(void *dst, const void *src, int src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(src_bytes));
}
static __device__ __forceinline__ void cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
static __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

static __device__ __forceinline__ void ldsm_x4(unsigned &r0, unsigned &r1, unsigned &r2,
                                               unsigned &r3, const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(smem_u32(p)));
}
static __device__ __forceinline__ void ldsm_x4_t(unsigned &r0, unsigned &r1, unsigned &r2,
                                                 unsigned &r3, const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(smem_u32(p)));
}

/* c += a (16x16, row) * b (16x8, col), fp16 in, float32 accumulate */
static __device__ __forceinline__ void mma16816(float *c, const unsigned *a, unsigned b0,
                                                unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

static __device__ __forceinline__ unsigned pack_h2(float lo, float hi)
{
    const __half2 h = __floats2half2_rn(lo, hi);
    return *(const unsigned *)&h;
}

/* Grid (query block, head); gridDim.x - 1 - blockIdx.x is the query block. */
template <int D>
static __global__ void __launch_bounds__(F2_THREADS)
fa2_kernel(const kvt *__restrict__ q, const kvt *__restrict__ kc, const kvt *__restrict__ vc,
           int n, int pos0, int nh, int nkv, int window, float scale_log2, float *out)
{
    typedef F2Layout<D> Ly;
    constexpr int LD = Ly::LD;
    constexpr int KT = D / 16;                     /* k-steps of S = Q K^T */
    constexpr int NT = D / 8;                      /* 8-wide column tiles of O */
    constexpr int V8 = D / 8;                      /* 16-byte vectors per row */
    extern __shared__ __align__(16) unsigned char smem[];
    kvt *sQ = (kvt *)(smem + Ly::Q);
    kvt *sK = (kvt *)(smem + Ly::K);
    kvt *sV = (kvt *)(smem + Ly::V);

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t4 = lane & 3;
    const int m0 = (gridDim.x - 1 - blockIdx.x) * F2_BM;
    const int h = blockIdx.y, kvh = h / (nh / nkv);
    const size_t qdim = (size_t)nh * D, kvdim = (size_t)nkv * D;
    const int q_first = pos0 + m0;
    const int kv_end = pos0 + min(m0 + F2_BM, n);           /* exclusive */
    const int kv_begin = window > 0 ? max(0, q_first - window + 1) : 0;
    const int ntiles = (kv_end - kv_begin + F2_BN - 1) / F2_BN;

    /* Q rows past n are zeros; cache rows past kv_end are zeros (and masked) */
    for (int idx = tid; idx < F2_BM * V8; idx += F2_THREADS) {
        const int r = idx / V8, c = (idx % V8) * 8;
        const bool ok = m0 + r < n;
        cp_async16(sQ + r * LD + c, q + (size_t)(ok ? m0 + r : 0) * qdim + (size_t)h * D + c,
                   ok ? 16 : 0);
    }
    auto load_kv = [&](int tile, int stage) {
        const int k0 = kv_begin + tile * F2_BN;
        kvt *dK = sK + stage * F2_BN * LD, *dV = sV + stage * F2_BN * LD;
        for (int idx = tid; idx < F2_BN * V8; idx += F2_THREADS) {
            const int r = idx / V8, c = (idx % V8) * 8;
            const bool ok = k0 + r < kv_end;
            const size_t off = (size_t)(ok ? k0 + r : kv_begin) * kvdim + (size_t)kvh * D + c;
            cp_async16(dK + r * LD + c, kc + off, ok ? 16 : 0);
            cp_async16(dV + r * LD + c, vc + off, ok ? 16 : 0);
        }
    };
    load_kv(0, 0);
    cp_async_commit();

    unsigned qf[KT][4];
    float o[NT][4];
#pragma unroll
    for (int d = 0; d < NT; d++)
        o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
    float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.f, 0.f};
    const int qr[2] = {pos0 + m0 + warp * 16 + g, pos0 + m0 + warp * 16 + g + 8};

    for (int it = 0; it < ntiles; it++) {
        if (it + 1 < ntiles) {
            load_kv(it + 1, (it + 1) & 1);
            cp_async_commit();
            cp_async_wait<1>();                    /* everything but the newest group */
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (it == 0) {
#pragma unroll
            for (int kk = 0; kk < KT; kk++)
                ldsm_x4(qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3],
                        sQ + (warp * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD + kk * 16 +
                            (lane >> 4) * 8);
        }
        const kvt *cK = sK + (it & 1) * F2_BN * LD, *cV = sV + (it & 1) * F2_BN * LD;
        const int k0 = kv_begin + it * F2_BN;

        /* S[16 x 64] = Q_w K^T, 8 tiles of 16 x 8 */
        float s[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++)
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KT; kk++) {
#pragma unroll
            for (int jp = 0; jp < 4; jp++) {
                unsigned b0, b1, b2, b3;
                ldsm_x4(b0, b1, b2, b3,
                        cK + (16 * jp + (lane >> 4) * 8 + (lane & 7)) * LD + kk * 16 +
                            ((lane >> 3) & 1) * 8);
                mma16816(s[2 * jp], qf[kk], b0, b1);
                mma16816(s[2 * jp + 1], qf[kk], b2, b3);
            }
        }
        /* mask, scale (log2 units), online softmax per row (a row's 4 threads: a quad) */
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int j = 0; j < 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int kp = k0 + 8 * j + 2 * t4 + (e & 1), r = e >> 1;
                const bool ok = kp < kv_end && kp <= qr[r] && (window <= 0 || kp > qr[r] - window);
                s[j][e] = ok ? s[j][e] * scale_log2 : -INFINITY;
                mx[r] = fmaxf(mx[r], s[j][e]);
            }
        }
        float alpha[2], mu[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            const float m_new = fmaxf(m_r[r], mx[r]);
            mu[r] = m_new == -INFINITY ? 0.f : m_new;          /* all masked so far */
            alpha[r] = exp2f(m_r[r] - mu[r]);                  /* m_r = -inf: 0 */
            m_r[r] = m_new;
        }
        float sum[2] = {0.f, 0.f};
#pragma unroll
        for (int j = 0; j < 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                s[j][e] = exp2f(s[j][e] - mu[e >> 1]);         /* masked: 0 */
                sum[e >> 1] += s[j][e];
            }
        }
#pragma unroll
        for (int r = 0; r < 2; r++)
            l_r[r] = l_r[r] * alpha[r] + sum[r];                /* this thread's columns */
#pragma unroll
        for (int d = 0; d < NT; d++) {
            o[d][0] *= alpha[0];
            o[d][1] *= alpha[0];
            o[d][2] *= alpha[1];
            o[d][3] *= alpha[1];
        }
        /* O[16 x D] += P[16 x 64] V[64 x D]: P's A fragments are the S accumulators */
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            unsigned a[4];
            a[0] = pack_h2(s[2 * kk][0], s[2 * kk][1]);
            a[1] = pack_h2(s[2 * kk][2], s[2 * kk][3]);
            a[2] = pack_h2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            a[3] = pack_h2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int dp = 0; dp < NT / 2; dp++) {
                unsigned b0, b1, b2, b3;
                ldsm_x4_t(b0, b1, b2, b3,
                          cV + (16 * kk + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD +
                              8 * (2 * dp + (lane >> 4)));
                mma16816(o[2 * dp], a, b0, b1);
                mma16816(o[2 * dp + 1], a, b2, b3);
            }
        }
        __syncthreads();                  /* before the next iteration's load reuses the stage */
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
        l_r[r] += __shfl_xor_sync(0xffffffffu, l_r[r], 1);
        l_r[r] += __shfl_xor_sync(0xffffffffu, l_r[r], 2);
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = m0 + warp * 16 + g + 8 * r;
        if (row >= n)
            continue;
        const float inv = l_r[r] > 0.f ? 1.f / l_r[r] : 0.f;
        float *orow = out + (size_t)row * qdim + (size_t)h * D + 2 * t4;
#pragma unroll
        for (int d = 0; d < NT; d++)
            *(float2 *)(orow + 8 * d) = make_float2(o[d][2 * r] * inv, o[d][2 * r + 1] * inv);
    }
}

/* The dynamic shared-memory limit is raised once per device and kernel (up to 64 devices;
 * beyond that on every launch). */
template <int D>
static cudaError_t launch_fa2(cudaStream_t s, const kvt *q, const kvt *kc, const kvt *vc, int n,
                              int pos0, int nh, int nkv, int window, float *out)
{
    static unsigned long long attr_done;            /* bit per device */
    const size_t bytes = F2Layout<D>::BYTES;
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess)
        return e;
    if (dev >= 64 || !(attr_done >> dev & 1)) {
        e = cudaFuncSetAttribute(fa2_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)bytes);
        if (e != cudaSuccess)
            return e;
        if (dev < 64)
            attr_done |= 1ull << dev;
    }
    const dim3 grid((unsigned)((n + F2_BM - 1) / F2_BM), (unsigned)nh);
    fa2_kernel<D><<<grid, F2_THREADS, bytes, s>>>(q, kc, vc, n, pos0, nh, nkv, window,
                                                  1.4426950408889634f / sqrtf((float)D), out);
    return cudaGetLastError();
}

cudaError_t fk_attn_prefill(cudaStream_t s, const kvt *q, const kvt *kc, const kvt *vc, int n,
                            int pos0, int nh, int nkv, int hd, int window, float *out)
{
    if (n <= 0 || pos0 < 0 || nh <= 0 || nkv <= 0 || nh % nkv || nh > 65535)
        return cudaErrorInvalidValue;
    switch (hd) {
    case 32: return launch_fa2<32>(s, q, kc, vc, n, pos0, nh, nkv, window, out);
    case 64: return launch_fa2<64>(s, q, kc, vc, n, pos0, nh, nkv, window, out);
    case 96: return launch_fa2<96>(s, q, kc, vc, n, pos0, nh, nkv, window, out);
    case 128: return launch_fa2<128>(s, q, kc, vc, n, pos0, nh, nkv, window, out);
    default: return cudaErrorInvalidValue;
    }
}
