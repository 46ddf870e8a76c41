/* attn_prefill.cu: causal flash attention for prefill (FlashAttention-2 scheme on
 * nvcuda::wmma fp16 16x16x16 tensor-core tiles, float32 accumulation): a block owns 64
 * queries of one head, walks 64-key tiles of the cache with an online softmax, and never
 * writes the score matrix to device memory. Grouped-query heads and the sliding window. */
#include "kernels/kernels.cuh"
#include <math.h>
#include <mma.h>

using namespace nvcuda;

#define FA_BM 64                 /* queries per block (16 per warp) */
#define FA_BN 64                 /* keys per tile */
#define FA_THREADS 128

static constexpr size_t fa_align(size_t x) { return (x + 127) / 128 * 128; }

/* Shared-memory layout for head_dim D. Leading dimensions are padded (bank conflicts) and
 * keep every 16-row / 16-column wmma tile 32-byte aligned as load/store_matrix_sync need. */
template <int D>
struct FaLayout {
    static constexpr int LDQ = D + 8;      /* fp16: Q, K, V tiles [64][LDQ] */
    static constexpr int LDS = FA_BN + 4;  /* f32: scores [64][LDS] */
    static constexpr int LDP = FA_BN + 8;  /* fp16: probabilities [64][LDP] */
    static constexpr int LDO = D + 4;      /* f32: output accumulator [64][LDO] */
    static constexpr size_t Q = 0;
    static constexpr size_t K = fa_align(Q + (size_t)FA_BM * LDQ * 2);
    static constexpr size_t V = fa_align(K + (size_t)FA_BN * LDQ * 2);
    static constexpr size_t S = fa_align(V + (size_t)FA_BN * LDQ * 2);
    static constexpr size_t P = fa_align(S + (size_t)FA_BM * LDS * 4);
    static constexpr size_t O = fa_align(P + (size_t)FA_BM * LDP * 2);
    static constexpr size_t M = fa_align(O + (size_t)FA_BM * LDO * 4);  /* running max */
    static constexpr size_t L = M + FA_BM * 4;                           /* running sum */
    static constexpr size_t A = L + FA_BM * 4;                           /* rescale factor */
    static constexpr size_t BYTES = A + FA_BM * 4;
};

/* Grid (query block, head). Queries are rows m0.. of q (absolute positions pos0 + row). */
template <int D>
static __global__ void __launch_bounds__(FA_THREADS)
attn_prefill_kernel(const kvt *q, const kvt *kc, const kvt *vc, int n, int pos0, int nh,
                    int nkv, int window, float scale, float *out)
{
    typedef FaLayout<D> Ly;
    extern __shared__ __align__(128) unsigned char smem[];
    kvt *sQ = (kvt *)(smem + Ly::Q);
    kvt *sK = (kvt *)(smem + Ly::K);
    kvt *sV = (kvt *)(smem + Ly::V);
    float *sS = (float *)(smem + Ly::S);
    kvt *sP = (kvt *)(smem + Ly::P);
    float *sO = (float *)(smem + Ly::O);
    float *sM = (float *)(smem + Ly::M);
    float *sL = (float *)(smem + Ly::L);
    float *sA = (float *)(smem + Ly::A);

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int h = blockIdx.y, kvh = h / (nh / nkv);
    const int m0 = blockIdx.x * FA_BM;
    const size_t qdim = (size_t)nh * D, kvdim = (size_t)nkv * D;
    constexpr int V8 = D / 8;                 /* 16-byte vectors per row */

    for (int idx = tid; idx < FA_BM * V8; idx += FA_THREADS) {
        const int r = idx / V8, c = (idx % V8) * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (m0 + r < n)
            v = *(const uint4 *)(q + (size_t)(m0 + r) * qdim + (size_t)h * D + c);
        *(uint4 *)(sQ + r * Ly::LDQ + c) = v;
    }
    for (int idx = tid; idx < FA_BM * Ly::LDO; idx += FA_THREADS)
        sO[idx] = 0.f;
    if (tid < FA_BM) {
        sM[tid] = -INFINITY;
        sL[tid] = 0.f;
    }
    /* keys this block needs: from the first query's window start to the last query */
    const int q_first = pos0 + m0;
    const int kv_end = pos0 + min(m0 + FA_BM, n);          /* exclusive */
    const int kv_begin = window > 0 ? max(0, q_first - window + 1) : 0;
    __syncthreads();

    const int wr = warp * 16;                   /* this warp's first row in the block */
    /* the warp's 16 query rows stay in registers for the whole key loop */
    wmma::fragment<wmma::matrix_a, 16, 16, 16, kvt, wmma::row_major> fq[D / 16];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
        wmma::load_matrix_sync(fq[kk], sQ + wr * Ly::LDQ + kk * 16, Ly::LDQ);
    for (int k0 = kv_begin; k0 < kv_end; k0 += FA_BN) {
        for (int idx = tid; idx < FA_BN * V8; idx += FA_THREADS) {
            const int r = idx / V8, c = (idx % V8) * 8;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            if (k0 + r < kv_end) {      /* rows past the end are zero, never garbage */
                const size_t off = (size_t)(k0 + r) * kvdim + (size_t)kvh * D + c;
                kv = *(const uint4 *)(kc + off);
                vv = *(const uint4 *)(vc + off);
            }
            *(uint4 *)(sK + r * Ly::LDQ + c) = kv;
            *(uint4 *)(sV + r * Ly::LDQ + c) = vv;
        }
        __syncthreads();

        /* S[16 x 64] = Q_w[16 x D] K^T; K row-major [key][dim] is K^T column-major. */
        {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, kvt, wmma::col_major> fb;
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
#pragma unroll
            for (int j = 0; j < FA_BN / 16; j++) {
                wmma::fill_fragment(fc, 0.f);
#pragma unroll
                for (int kk = 0; kk < D / 16; kk++) {
                    wmma::load_matrix_sync(fb, sK + j * 16 * Ly::LDQ + kk * 16, Ly::LDQ);
                    wmma::mma_sync(fc, fq[kk], fb, fc);
                }
                wmma::store_matrix_sync(sS + wr * Ly::LDS + j * 16, fc, Ly::LDS,
                                        wmma::mem_row_major);
            }
        }
        __syncwarp();

        /* Online softmax: two lanes per row, 32 columns each. */
        {
            const int r = wr + (lane >> 1), c0 = (lane & 1) * 32;
            const int qpos = pos0 + m0 + r;
            float *srow = sS + r * Ly::LDS;
            float mx = -INFINITY;
            for (int c = c0; c < c0 + 32; c++) {
                const int kpos = k0 + c;
                const bool ok = kpos < kv_end && kpos <= qpos &&
                                (window <= 0 || kpos > qpos - window);
                const float v = ok ? srow[c] * scale : -INFINITY;
                srow[c] = v;
                mx = fmaxf(mx, v);
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            const float m_old = sM[r];
            const float m_new = fmaxf(m_old, mx);
            const float m_use = m_new == -INFINITY ? 0.f : m_new;   /* all masked so far */
            float sum = 0.f;
            for (int c = c0; c < c0 + 32; c++) {
                const float p = expf(srow[c] - m_use);              /* masked: exp(-inf) = 0 */
                sP[r * Ly::LDP + c] = kv_cvt(p);
                sum += p;
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            const float alpha = expf(m_old - m_use);                /* m_old = -inf: 0 */
            __syncwarp();                      /* both lanes have read sM[r] */
            if ((lane & 1) == 0) {
                sM[r] = m_new;
                sL[r] = sL[r] * alpha + sum;
                sA[r] = alpha;
            }
        }
        __syncwarp();
        for (int idx = lane; idx < 16 * D; idx += 32) {
            const int r = wr + idx / D, c = idx % D;
            sO[r * Ly::LDO + c] *= sA[r];
        }
        __syncwarp();

        /* O_w[16 x D] += P_w[16 x 64] V[64 x D] */
        {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, kvt, wmma::row_major> fp;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, kvt, wmma::row_major> fv;
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> fo;
#pragma unroll
            for (int j = 0; j < D / 16; j++) {
                wmma::load_matrix_sync(fo, sO + wr * Ly::LDO + j * 16, Ly::LDO,
                                       wmma::mem_row_major);
#pragma unroll
                for (int kk = 0; kk < FA_BN / 16; kk++) {
                    wmma::load_matrix_sync(fp, sP + wr * Ly::LDP + kk * 16, Ly::LDP);
                    wmma::load_matrix_sync(fv, sV + kk * 16 * Ly::LDQ + j * 16, Ly::LDQ);
                    wmma::mma_sync(fo, fp, fv, fo);
                }
                wmma::store_matrix_sync(sO + wr * Ly::LDO + j * 16, fo, Ly::LDO,
                                        wmma::mem_row_major);
            }
        }
        __syncthreads();                        /* before the next tile replaces sK, sV */
    }

    for (int idx = tid; idx < FA_BM * D; idx += FA_THREADS) {
        const int r = idx / D, c = idx % D;
        if (m0 + r < n) {
            const float l = sL[r];
            out[(size_t)(m0 + r) * qdim + (size_t)h * D + c] = l > 0.f ? sO[r * Ly::LDO + c] / l : 0.f;
        }
    }
}

template <int D>
static cudaError_t launch_prefill(cudaStream_t s, const kvt *q, const kvt *kc, const kvt *vc,
                                  int n, int pos0, int nh, int nkv, int window, float *out)
{
    /* > 48 KB of dynamic shared memory: opt in, once per device (a function attribute is
     * per device); bit d for device d < 64, beyond that on every launch */
    static unsigned long long attr_set;
    const size_t bytes = FaLayout<D>::BYTES;
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess)
        return e;
    if (dev >= 64 || !(attr_set >> dev & 1)) {
        e = cudaFuncSetAttribute(attn_prefill_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)bytes);
        if (e != cudaSuccess)
            return e;
        if (dev < 64)
            attr_set |= 1ull << dev;
    }
    dim3 grid((unsigned)((n + FA_BM - 1) / FA_BM), (unsigned)nh);
    attn_prefill_kernel<D><<<grid, FA_THREADS, bytes, s>>>(q, kc, vc, n, pos0, nh, nkv, window,
                                                          1.0f / sqrtf((float)D), out);
    return cudaGetLastError();
}

cudaError_t kern_attn_prefill(cudaStream_t s, const kvt *q, const kvt *kc, const kvt *vc,
                              int n, int pos0, int nh, int nkv, int hd, int window, float *out)
{
    if (n <= 0 || pos0 < 0 || nh <= 0 || nkv <= 0 || nh % nkv || nh > 65535)
        return cudaErrorInvalidValue;
    switch (hd) {
    case 32: return launch_prefill<32>(s, q, kc, vc, n, pos0, nh, nkv, window, out);
    case 64: return launch_prefill<64>(s, q, kc, vc, n, pos0, nh, nkv, window, out);
    case 96: return launch_prefill<96>(s, q, kc, vc, n, pos0, nh, nkv, window, out);
    case 128: return launch_prefill<128>(s, q, kc, vc, n, pos0, nh, nkv, window, out);
    default: return cudaErrorInvalidValue;
    }
}
