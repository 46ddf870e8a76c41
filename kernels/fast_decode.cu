/* fast_decode.cu: the opt-in decode kernels (fast.cuh; PHI3_CUDA_FAST=1). Compiled, not
 * yet run on a GPU. */
#include "kernels/fast.cuh"
#include <math.h>

/* Programmatic dependent launch (sm_90): a kernel launched with pdl may start while the
 * previous one finishes; it lets its own dependents launch at once (pdl_trigger) and waits
 * for the previous kernel's results (pdl_wait) before it reads anything that kernel wrote.
 * Without the launch attribute (pdl = 0) both are no-ops in effect. */
static __device__ __forceinline__ void pdl_trigger()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
static __device__ __forceinline__ void pdl_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* Launch k<<<grid, block, smem, s>>>(args...), with the PDL attribute when pdl. */
template <typename... KArgs, typename... Args>
static cudaError_t fk_launch(int pdl, void (*k)(KArgs...), dim3 grid, dim3 block, size_t smem,
                             cudaStream_t s, Args... args)
{
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    const cudaError_t e = cudaLaunchKernelEx(&cfg, k, ((KArgs)args)...);
    return e != cudaSuccess ? e : cudaGetLastError();
}

/* ---- matrix-vector product ---- */

#define GV_WARPS 8               /* warps per block; each computes two rows */

/* 8 bf16 of u (element 0 in the low half of u.x) times 8 floats. */
static __device__ __forceinline__ float dot8(uint4 u, float4 a, float4 b)
{
    float s = __uint_as_float(u.x << 16) * a.x;
    s = fmaf(__uint_as_float(u.x & 0xffff0000u), a.y, s);
    s = fmaf(__uint_as_float(u.y << 16), a.z, s);
    s = fmaf(__uint_as_float(u.y & 0xffff0000u), a.w, s);
    s = fmaf(__uint_as_float(u.z << 16), b.x, s);
    s = fmaf(__uint_as_float(u.z & 0xffff0000u), b.y, s);
    s = fmaf(__uint_as_float(u.w << 16), b.z, s);
    s = fmaf(__uint_as_float(u.w & 0xffff0000u), b.w, s);
    return s;
}

/* Block: the input (normalised when nw != NULL) into shared memory, then each warp the two
 * rows of one logical row: 16-byte streaming loads of the weights, lane l taking vectors
 * l, l + 32, ...; shuffle reduction; the epilogue on lane 0. */
template <int EPI>
static __global__ void __launch_bounds__(GV_WARPS * 32)
gemv_kernel(const bf16 *__restrict__ W, int N, int K, const float *__restrict__ x,
            const float *__restrict__ nw, float eps, float *y)
{
    extern __shared__ float4 sx4[];
    __shared__ float red[GV_WARPS];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int K4 = K / 4;
    const int NL = EPI == FK_SWIGLU ? N / 2 : (N + 1) / 2;
    const int lr = blockIdx.x * GV_WARPS + warp;
    int r0 = 0, r1 = 0;
    if (EPI == FK_SWIGLU) {
        r0 = lr;
        r1 = lr + N / 2;
    } else {
        r0 = 2 * lr;
        r1 = min(2 * lr + 1, N - 1);        /* odd N: the last warp computes its row twice */
    }
    pdl_trigger();
    if (lr < NL && lane * 128 < min(K * 2, 2048)) {
        /* the weights do not depend on the previous kernel: with PDL, start the part the
         * first unrolled step reads (2 KB of each row, one 128-byte line per lane) towards
         * L2 while that kernel finishes. Not whole rows: every resident block doing that
         * for a large matrix would overrun the L2 before the lines are used. */
        const char *p0 = (const char *)(W + (size_t)r0 * K);
        const char *p1 = (const char *)(W + (size_t)r1 * K);
        asm volatile("prefetch.global.L2 [%0];" ::"l"(p0 + lane * 128));
        asm volatile("prefetch.global.L2 [%0];" ::"l"(p1 + lane * 128));
    }
    pdl_wait();
    const float4 *x4 = (const float4 *)x;
    float ss = 0.f;
    for (int i = tid; i < K4; i += GV_WARPS * 32) {
        const float4 v = x4[i];
        sx4[i] = v;
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    if (nw) {
#pragma unroll
        for (int off = 16; off > 0; off >>= 1)
            ss += __shfl_xor_sync(0xffffffffu, ss, off);
        if (lane == 0)
            red[warp] = ss;
        __syncthreads();
        float tot = 0.f;
#pragma unroll
        for (int w = 0; w < GV_WARPS; w++)
            tot += red[w];
        const float r = 1.0f / sqrtf(tot / (float)K + eps);
        const float4 *w4 = (const float4 *)nw;
        for (int i = tid; i < K4; i += GV_WARPS * 32) {   /* the elements this thread wrote */
            float4 v = sx4[i];
            const float4 g = w4[i];
            v.x = g.x * (v.x * r);
            v.y = g.y * (v.y * r);
            v.z = g.z * (v.z * r);
            v.w = g.w * (v.w * r);
            sx4[i] = v;
        }
    }
    __syncthreads();

    if (lr >= NL)
        return;
    const uint4 *w0 = (const uint4 *)(W + (size_t)r0 * K);
    const uint4 *w1 = (const uint4 *)(W + (size_t)r1 * K);
    const int K8 = K / 8;
    float a0 = 0.f, a1 = 0.f;
#pragma unroll 4
    for (int j = lane; j < K8; j += 32) {
        const uint4 u0 = __ldcs(w0 + j), u1 = __ldcs(w1 + j);
        const float4 xa = sx4[2 * j], xb = sx4[2 * j + 1];
        a0 += dot8(u0, xa, xb);
        a1 += dot8(u1, xa, xb);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        a0 += __shfl_xor_sync(0xffffffffu, a0, off);
        a1 += __shfl_xor_sync(0xffffffffu, a1, off);
    }
    if (lane != 0)
        return;
    if (EPI == FK_SWIGLU) {
        y[lr] = a1 * (a0 / (1.0f + expf(-a0)));
    } else if (EPI == FK_ADD) {
        y[r0] += a0;
        if (r1 != r0)
            y[r1] += a1;
    } else {
        y[r0] = a0;
        if (r1 != r0)
            y[r1] = a1;
    }
}

cudaError_t fk_gemv_prepare(int max_k)
{
    const int bytes = max_k * 4;
    if (bytes <= 48 * 1024)
        return cudaSuccess;
    cudaError_t e = cudaFuncSetAttribute(gemv_kernel<FK_STORE>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(gemv_kernel<FK_ADD>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(gemv_kernel<FK_SWIGLU>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    return e;
}

cudaError_t fk_gemv(cudaStream_t s, const bf16 *W, int N, int K, const float *x,
                    const float *norm_w, float eps, int epi, float *y, int pdl)
{
    if (N <= 0 || K <= 0 || K % 8 || (epi == FK_SWIGLU && N % 2) || epi < 0 || epi > 2 ||
        ((uintptr_t)W | (uintptr_t)x | (uintptr_t)norm_w) % 16)
        return cudaErrorInvalidValue;
    const int NL = epi == FK_SWIGLU ? N / 2 : (N + 1) / 2;
    const unsigned blocks = (unsigned)((NL + GV_WARPS - 1) / GV_WARPS);
    const size_t smem = (size_t)K * 4;
    switch (epi) {
    case FK_STORE:
        return fk_launch(pdl, gemv_kernel<FK_STORE>, blocks, GV_WARPS * 32, smem, s, W, N, K, x,
                         norm_w, eps, y);
    case FK_ADD:
        return fk_launch(pdl, gemv_kernel<FK_ADD>, blocks, GV_WARPS * 32, smem, s, W, N, K, x,
                         norm_w, eps, y);
    default:
        return fk_launch(pdl, gemv_kernel<FK_SWIGLU>, blocks, GV_WARPS * 32, smem, s, W, N, K, x,
                         norm_w, eps, y);
    }
}

/* ---- embedding of one token ---- */

static __global__ void embed1_kernel(const bf16 *table, const int32_t *d_id, int hidden, float *x)
{
    pdl_trigger();
    pdl_wait();
    const bf16 *row = table + (size_t)*d_id * hidden;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < hidden; i += gridDim.x * blockDim.x)
        x[i] = __bfloat162float(row[i]);
}

cudaError_t fk_embed1(cudaStream_t s, const bf16 *table, const int32_t *d_id, int hidden, float *x,
                      int pdl)
{
    if (hidden <= 0)
        return cudaErrorInvalidValue;
    return fk_launch(pdl, embed1_kernel, dim3((hidden + 255) / 256), dim3(256), 0, s, table, d_id,
                     hidden, x);
}

/* ---- RoPE + KV write ---- */

/* The CPU backend's angle (decode/rope.c): float32 angle, cos/sin in double. */
static __device__ __forceinline__ void fk_cos_sin(float inv_freq, int pos, float *c, float *s)
{
    const float a = __fmul_rn(inv_freq, (float)pos);
    double sd, cd;
    sincos((double)a, &sd, &cd);
    *c = (float)cd;
    *s = (float)sd;
}

/* One thread per (token, head of Q | K | V, pair i < hd/2). */
static __global__ void rope_fast_kernel(const float *qkv, int n, const int32_t *d_pos, int pos0,
                                        int nh, int nkv, int hd, const float *inv_freq, float af,
                                        float *q_f32, kvt *q_h, kvt *kc, kvt *vc)
{
    const int half = hd / 2, heads = nh + 2 * nkv;
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    pdl_trigger();
    pdl_wait();
    if (idx >= (long)n * heads * half)
        return;
    const int t = (int)(idx / ((long)heads * half));
    const int rem = (int)(idx % ((long)heads * half));
    const int hh = rem / half, i = rem % half;
    const int pos = (d_pos ? *d_pos : pos0) + t;
    const float *row = qkv + (size_t)t * heads * hd;
    const int o = hh * hd + i;
    const size_t kvdim = (size_t)nkv * hd;
    if (hh >= nh + nkv) {                               /* V: copied */
        const int e = (hh - nh - nkv) * hd + i;
        vc[(size_t)pos * kvdim + e] = kv_cvt_nan(row[o]);
        vc[(size_t)pos * kvdim + e + half] = kv_cvt_nan(row[o + half]);
        return;
    }
    float c, sn;
    fk_cos_sin(inv_freq[i], pos, &c, &sn);
    c *= af;
    sn *= af;
    const float a = row[o], b = row[o + half];
    const float ra = a * c - b * sn, rb = b * c + a * sn;
    if (hh < nh) {
        const size_t qo = (size_t)t * nh * hd + o;
        if (q_f32) {
            q_f32[qo] = ra;
            q_f32[qo + half] = rb;
        }
        if (q_h) {
            q_h[qo] = kv_cvt_nan(ra);
            q_h[qo + half] = kv_cvt_nan(rb);
        }
    } else {
        const int e = (hh - nh) * hd + i;
        kc[(size_t)pos * kvdim + e] = kv_cvt_nan(ra);
        kc[(size_t)pos * kvdim + e + half] = kv_cvt_nan(rb);
    }
}

cudaError_t fk_rope_qkv(cudaStream_t s, const float *qkv, int n, const int32_t *d_pos, int pos0,
                        int nh, int nkv, int hd, const float *inv_freq, float attn_factor,
                        float *q_f32, kvt *q_h, kvt *kc, kvt *vc, int pdl)
{
    if (n <= 0 || pos0 < 0 || nh <= 0 || nkv <= 0 || hd <= 0 || hd % 2)
        return cudaErrorInvalidValue;
    const long threads = (long)n * (nh + 2 * nkv) * (hd / 2);
    if ((threads + 255) / 256 > 0x7fffffffL)
        return cudaErrorInvalidValue;
    return fk_launch(pdl, rope_fast_kernel, dim3((unsigned)((threads + 255) / 256)), dim3(256), 0,
                     s, qkv, n, d_pos, pos0, nh, nkv, hd, inv_freq, attn_factor, q_f32, q_h, kc,
                     vc);
}

/* ---- split-KV decode attention ---- */

#define AD_THREADS 128
#define AD_WARPS (AD_THREADS / 32)
#define AD_KEYS_WARP 8           /* keys per warp per step: 4 lanes per key */
#define AD_KEYS_BLOCK (AD_WARPS * AD_KEYS_WARP)

static __device__ __forceinline__ void h8_to_f(uint4 u, float *f)
{
    const __half2 *h = (const __half2 *)&u;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const float2 v = __half22float2(h[k]);
        f[2 * k] = v.x;
        f[2 * k + 1] = v.y;
    }
}

/* Grid (split, head). Lane group g = lane / 4 of warp w takes keys k0 + w*8 + g + 32 i;
 * sub-lane s = lane % 4 holds the 16-byte vectors s, s + 4, ... of the head's D dims
 * (D/32 of them) of Q, K, V and of its output. Online softmax per group, then merged
 * across the groups (shuffles) and the warps (shared memory). Partial result:
 * work[(h * nsplit + split) * (D + 2)] = {max, sum, out[D]} (max -inf: no keys). */
template <int D>
static __global__ void __launch_bounds__(AD_THREADS)
attn_fast_kernel(const float *q, const kvt *kc, const kvt *vc, const int32_t *d_pos, int nh,
                 int nkv, int window, float scale, float *work)
{
    constexpr int T = D / 32;                     /* 16-byte vectors per lane */
    __shared__ float s_m[AD_WARPS], s_l[AD_WARPS];
    __shared__ __align__(16) float s_acc[AD_WARPS][D];
    const int split = blockIdx.x, nsplit = gridDim.x, h = blockIdx.y;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, sub = lane & 3;
    const int kvh = h / (nh / nkv);
    const size_t kvdim = (size_t)nkv * D;
    pdl_trigger();
    pdl_wait();
    const int qpos = *d_pos;
    const int first = window > 0 ? max(0, qpos - window + 1) : 0;
    const int len = qpos + 1 - first;
    int chunk = (len + nsplit - 1) / nsplit;
    chunk = (chunk + AD_KEYS_BLOCK - 1) / AD_KEYS_BLOCK * AD_KEYS_BLOCK;
    const int k0 = first + split * chunk;
    const int k1 = min(k0 + chunk, qpos + 1);

    float qr[T][8], acc[T][8];
    const float *qp = q + (size_t)h * D;
#pragma unroll
    for (int t = 0; t < T; t++) {
#pragma unroll
        for (int e = 0; e < 8; e++) {
            qr[t][e] = qp[(sub + 4 * t) * 8 + e] * scale;
            acc[t][e] = 0.f;
        }
    }
    float m = -INFINITY, l = 0.f;
    /* the trip count is the same for every lane of the warp (shuffles below); unrolled
     * so that the next keys' loads are in flight during this one's softmax */
#pragma unroll 2
    for (int jb = k0 + warp * AD_KEYS_WARP; jb < k1; jb += AD_KEYS_BLOCK) {
        const int j = jb + g;
        const bool ok = j < k1;
        uint4 kv[T], vv[T];
        const size_t base = (size_t)(ok ? j : k0) * kvdim + (size_t)kvh * D;
        const uint4 *kp = (const uint4 *)(kc + base), *vp = (const uint4 *)(vc + base);
#pragma unroll
        for (int t = 0; t < T; t++) {
            kv[t] = kp[sub + 4 * t];
            vv[t] = vp[sub + 4 * t];
        }
        float d = 0.f;
#pragma unroll
        for (int t = 0; t < T; t++) {
            float f[8];
            h8_to_f(kv[t], f);
#pragma unroll
            for (int e = 0; e < 8; e++)
                d = fmaf(qr[t][e], f[e], d);
        }
        d += __shfl_xor_sync(0xffffffffu, d, 1);
        d += __shfl_xor_sync(0xffffffffu, d, 2);
        const float sc = ok ? d : -INFINITY;
        const float m_new = fmaxf(m, sc);
        const float corr = m_new == -INFINITY ? 1.f : expf(m - m_new);   /* m = -inf: 0 */
        /* masked: 0; a NaN score stays NaN (fmaxf dropped it from m_new) */
        const float p = sc == -INFINITY ? 0.f : expf(sc - m_new);
        l = l * corr + p;
#pragma unroll
        for (int t = 0; t < T; t++) {
            float f[8];
            h8_to_f(vv[t], f);
#pragma unroll
            for (int e = 0; e < 8; e++)
                acc[t][e] = fmaf(p, f[e], acc[t][e] * corr);
        }
        m = m_new;
    }
    /* merge the 8 groups of the warp (lanes with the same sub hold the same dims) */
    float M = m;
#pragma unroll
    for (int off = 4; off < 32; off <<= 1)
        M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, off));
    const float f = m == -INFINITY ? 0.f : expf(m - M);
    l *= f;
#pragma unroll
    for (int off = 4; off < 32; off <<= 1)
        l += __shfl_xor_sync(0xffffffffu, l, off);
#pragma unroll
    for (int t = 0; t < T; t++) {
#pragma unroll
        for (int e = 0; e < 8; e++) {
            float v = acc[t][e] * f;
#pragma unroll
            for (int off = 4; off < 32; off <<= 1)
                v += __shfl_xor_sync(0xffffffffu, v, off);
            acc[t][e] = v;
        }
    }
    if (lane == 0) {
        s_m[warp] = M;
        s_l[warp] = l;
    }
    if (g == 0) {
#pragma unroll
        for (int t = 0; t < T; t++)
#pragma unroll
            for (int e = 0; e < 8; e++)
                s_acc[warp][(sub + 4 * t) * 8 + e] = acc[t][e];
    }
    __syncthreads();
    float MB = -INFINITY;
#pragma unroll
    for (int w = 0; w < AD_WARPS; w++)
        MB = fmaxf(MB, s_m[w]);
    float fw[AD_WARPS], L = 0.f;
#pragma unroll
    for (int w = 0; w < AD_WARPS; w++) {
        fw[w] = s_m[w] == -INFINITY ? 0.f : expf(s_m[w] - MB);
        L += s_l[w] * fw[w];
    }
    float *out = work + ((size_t)h * nsplit + split) * (D + 2);
    for (int dd = threadIdx.x; dd < D; dd += AD_THREADS) {
        float o = 0.f;
#pragma unroll
        for (int w = 0; w < AD_WARPS; w++)
            o += s_acc[w][dd] * fw[w];
        out[2 + dd] = o;
    }
    if (threadIdx.x == 0) {
        out[0] = MB;
        out[1] = L;
    }
}

/* Grid (head): combine the nsplit parts in split order. The query's own key is in some
 * part, so L > 0. */
static __global__ void attn_fast_merge(const float *work, int nsplit, int D, float *out)
{
    const int h = blockIdx.x;
    pdl_trigger();
    pdl_wait();
    attn_merge_parts(work + (size_t)h * nsplit * (D + 2), nsplit, D, out + (size_t)h * D);
}

int fk_decode_splits(int n_sm, int nh)
{
    /* about 4 blocks per multiprocessor over the heads */
    const int want = (4 * (n_sm > 0 ? n_sm : 1) + nh - 1) / (nh > 0 ? nh : 1);
    return want < 1 ? 1 : want > 256 ? 256 : want;
}

cudaError_t fk_attn_decode(cudaStream_t s, const float *q, const kvt *kc, const kvt *vc,
                           const int32_t *d_pos, int nh, int nkv, int hd, int window,
                           int nsplit, float *work, size_t work_floats, float *out, int pdl)
{
    if (!d_pos || nh <= 0 || nkv <= 0 || nh % nkv || nsplit <= 0 || nsplit > 65535 ||
        !kern_attn_head_dim_ok(hd) || work_floats < (size_t)nh * nsplit * (hd + 2))
        return cudaErrorInvalidValue;
    const float scale = 1.0f / sqrtf((float)hd);
    const dim3 grid((unsigned)nsplit, (unsigned)nh);
    cudaError_t e;
    switch (hd) {
    case 32:
        e = fk_launch(pdl, attn_fast_kernel<32>, grid, dim3(AD_THREADS), 0, s, q, kc, vc, d_pos, nh,
                      nkv, window, scale, work);
        break;
    case 64:
        e = fk_launch(pdl, attn_fast_kernel<64>, grid, dim3(AD_THREADS), 0, s, q, kc, vc, d_pos, nh,
                      nkv, window, scale, work);
        break;
    case 96:
        e = fk_launch(pdl, attn_fast_kernel<96>, grid, dim3(AD_THREADS), 0, s, q, kc, vc, d_pos, nh,
                      nkv, window, scale, work);
        break;
    default:
        e = fk_launch(pdl, attn_fast_kernel<128>, grid, dim3(AD_THREADS), 0, s, q, kc, vc, d_pos,
                      nh, nkv, window, scale, work);
        break;
    }
    if (e != cudaSuccess)
        return e;
    return fk_launch(pdl, attn_fast_merge, dim3((unsigned)nh), dim3(128), 0, s, (const float *)work,
                     nsplit, hd, out);
}
