/* attn_decode.cu: split-KV attention for few queries (decode): the keys of one query and
 * head are split across blocks, each block writes (max, sum, unnormalised output) and a
 * second kernel merges the parts by log-sum-exp (Flash-Decoding). */
#include "kernels/kernels.cuh"
#include <math.h>

#define DEC_THREADS 128
#define DEC_WARPS (DEC_THREADS / 32)
#define DEC_MIN_CHUNK 64         /* keys per block at least: 16 per warp */

int kern_attn_head_dim_ok(int hd)
{
    return hd == 32 || hd == 64 || hd == 96 || hd == 128;
}

/* Grid (split, head, query). Each warp walks its keys one at a time with an online
 * softmax; lane l owns output dims l, l+32, ...; the 4 warps merge at the end.
 * work[((t * nh + h) * nsplit + split) * (D + 2)] = {max, sum, out[D]}. */
template <int D>
static __global__ void __launch_bounds__(DEC_THREADS)
attn_decode_kernel(const float *q, const kvt *kc, const kvt *vc, int pos0, int nh, int nkv,
                   int window, int chunk, int nsplit, float scale, float *work)
{
    constexpr int E = D / 32;
    __shared__ float s_m[DEC_WARPS], s_l[DEC_WARPS], s_acc[DEC_WARPS][D];
    const int split = blockIdx.x, h = blockIdx.y, t = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kvh = h / (nh / nkv);
    const size_t kvdim = (size_t)nkv * D;
    const int qpos = pos0 + t;
    const int first = window > 0 ? max(0, qpos - window + 1) : 0;
    const int k0 = first + split * chunk;
    const int k1 = min(k0 + chunk, qpos + 1);

    float qr[E], acc[E];
    const float *qp = q + ((size_t)t * nh + h) * D;
#pragma unroll
    for (int e = 0; e < E; e++) {
        qr[e] = qp[lane + 32 * e] * scale;
        acc[e] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    for (int j = k0 + warp; j < k1; j += DEC_WARPS) {
        const kvt *kp = kc + (size_t)j * kvdim + (size_t)kvh * D;
        const kvt *vp = vc + (size_t)j * kvdim + (size_t)kvh * D;
        float d = 0.f;
#pragma unroll
        for (int e = 0; e < E; e++)
            d += qr[e] * kv_f(kp[lane + 32 * e]);
#pragma unroll
        for (int off = 16; off > 0; off >>= 1)
            d += __shfl_xor_sync(0xffffffffu, d, off);
        d = __shfl_sync(0xffffffffu, d, 0);     /* one value for every lane */
        const float m_new = fmaxf(m, d);
        const float corr = expf(m - m_new);     /* m = -inf on the first key: 0 */
        const float p = expf(d - m_new);
        l = l * corr + p;
#pragma unroll
        for (int e = 0; e < E; e++)
            acc[e] = acc[e] * corr + p * kv_f(vp[lane + 32 * e]);
        m = m_new;
    }
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int e = 0; e < E; e++)
        s_acc[warp][lane + 32 * e] = acc[e];
    __syncthreads();

    float M = -INFINITY;
    for (int w = 0; w < DEC_WARPS; w++)
        M = fmaxf(M, s_m[w]);
    float *out = work + (((size_t)t * nh + h) * nsplit + split) * (D + 2);
    float f[DEC_WARPS];
    float L = 0.f;
    for (int w = 0; w < DEC_WARPS; w++) {
        f[w] = s_m[w] == -INFINITY ? 0.f : expf(s_m[w] - M);   /* warp without keys: 0 */
        L += s_l[w] * f[w];
    }
    for (int d = threadIdx.x; d < D; d += DEC_THREADS) {
        float o = 0.f;
        for (int w = 0; w < DEC_WARPS; w++)
            o += s_acc[w][d] * f[w];
        out[2 + d] = o;
    }
    if (threadIdx.x == 0) {
        out[0] = M;        /* -inf when this block had no keys; the merge skips it */
        out[1] = L;
    }
}

/* Grid (head, query): combine the nsplit parts. Every query has at least itself as key,
 * so some part is non-empty and L > 0. */
static __global__ void attn_merge_kernel(const float *work, int nh, int nsplit, int D,
                                         float *out)
{
    const int h = blockIdx.x, t = blockIdx.y;
    attn_merge_parts(work + ((size_t)t * nh + h) * nsplit * (D + 2), nsplit, D,
                     out + ((size_t)t * nh + h) * D);
}

cudaError_t kern_attn_decode(cudaStream_t s, const float *q, const kvt *kc, const kvt *vc,
                             int n, int pos0, int nh, int nkv, int hd, int window,
                             float *work, size_t work_floats, int n_sm, float *out)
{
    if (n <= 0 || pos0 < 0 || nh <= 0 || nkv <= 0 || nh % nkv || !kern_attn_head_dim_ok(hd))
        return cudaErrorInvalidValue;
    const size_t per_split = (size_t)n * nh * (hd + 2);
    if (work_floats < per_split)
        return cudaErrorInvalidValue;
    /* The longest key range of any query, then enough splits for ~4 blocks per SM
     * (bounded by the workspace), each at least DEC_MIN_CHUNK keys. */
    long longest = (long)pos0 + n;
    if (window > 0 && longest > window)
        longest = window;
    long want = ((long)4 * (n_sm > 0 ? n_sm : 1) + (long)nh * n - 1) / ((long)nh * n);
    long max_split = (long)(work_floats / per_split);
    if (want > max_split)
        want = max_split;
    if (want < 1)
        want = 1;
    long chunk = (longest + want - 1) / want;
    if (chunk < DEC_MIN_CHUNK)
        chunk = DEC_MIN_CHUNK;
    long nsplit = (longest + chunk - 1) / chunk;
    if (nsplit > max_split || nsplit > 65535)
        return cudaErrorInvalidValue;
    const float scale = 1.0f / sqrtf((float)hd);
    dim3 grid((unsigned)nsplit, (unsigned)nh, (unsigned)n);
    switch (hd) {
    case 32:
        attn_decode_kernel<32><<<grid, DEC_THREADS, 0, s>>>(q, kc, vc, pos0, nh, nkv, window,
                                                            (int)chunk, (int)nsplit, scale, work);
        break;
    case 64:
        attn_decode_kernel<64><<<grid, DEC_THREADS, 0, s>>>(q, kc, vc, pos0, nh, nkv, window,
                                                            (int)chunk, (int)nsplit, scale, work);
        break;
    case 96:
        attn_decode_kernel<96><<<grid, DEC_THREADS, 0, s>>>(q, kc, vc, pos0, nh, nkv, window,
                                                            (int)chunk, (int)nsplit, scale, work);
        break;
    default:
        attn_decode_kernel<128><<<grid, DEC_THREADS, 0, s>>>(q, kc, vc, pos0, nh, nkv, window,
                                                             (int)chunk, (int)nsplit, scale, work);
        break;
    }
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return e;
    attn_merge_kernel<<<dim3((unsigned)nh, (unsigned)n), 128, 0, s>>>(work, nh, (int)nsplit, hd,
                                                                     out);
    return cudaGetLastError();
}
