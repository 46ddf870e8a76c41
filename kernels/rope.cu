/* rope.cu: RoPE / LongRoPE in rotate-half layout: Q and K rotation with the KV-cache write,
 * and the cache export/import in the CPU backend's float32 row layout (sessions). A
 * LongRoPE short <-> long switch is not a re-rotation of cached keys (K and V of layers >= 1
 * depend on the rotation used below them): the backend recomputes the context instead. */
#include "kernels/kernels.cuh"

/* cos/sin of one angle exactly as the CPU backend computes them (decode/rope.c): the angle
 * rounded to float32, cos/sin in double, rounded to float. __fmul_rn: no FMA contraction. */
static __device__ __forceinline__ void angle_cos_sin(float inv_freq, int pos, float *c, float *s)
{
    float a = __fmul_rn(inv_freq, (float)pos);
    double sd, cd;
    sincos((double)a, &sd, &cd);
    *c = (float)cd;
    *s = (float)sd;
}

/* One thread per (token, frequency i < hd/2); it rotates pair (i, i + hd/2) of every Q and
 * K head of its token (the angle is computed once) and stores K and V into the cache. */
static __global__ void rope_qkv_kernel(const float *qkv, const float *qkv_lo, int n, int pos0,
                                       int nh, int nkv, int hd, const float *inv_freq, float af,
                                       float *q_f32, kvt *q_h, kvt *kc, kvt *vc)
{
    const int half = hd / 2;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n * half)
        return;
    const int t = idx / half, i = idx % half;
    const int pos = pos0 + t;
    float c, s;
    angle_cos_sin(inv_freq[i], pos, &c, &s);
    c *= af;
    s *= af;
    const size_t stride = (size_t)(nh + 2 * nkv) * hd;
    const float *row = qkv + (size_t)t * stride;
    const float *row_lo = qkv_lo ? qkv_lo + (size_t)t * stride : NULL;
    for (int h = 0; h < nh; h++) {
        const int o = h * hd + i;
        float a = row[o], b = row[o + half];
        if (row_lo) {
            a += row_lo[o];
            b += row_lo[o + half];
        }
        float ra = a * c - b * s, rb = b * c + a * s;
        const size_t qo = (size_t)t * nh * hd + o;
        if (q_f32) {
            q_f32[qo] = ra;
            q_f32[qo + half] = rb;
        }
        if (q_h) {
            q_h[qo] = kv_cvt(ra);
            q_h[qo + half] = kv_cvt(rb);
        }
    }
    const size_t kvdim = (size_t)nkv * hd;
    kvt *krow = kc + (size_t)pos * kvdim;
    kvt *vrow = vc + (size_t)pos * kvdim;
    for (int h = 0; h < nkv; h++) {
        const int o = h * hd + i;
        const size_t ko = (size_t)nh * hd + o, vo = ko + kvdim;
        float a = row[ko], b = row[ko + half];
        float va = row[vo], vb = row[vo + half];
        if (row_lo) {
            a += row_lo[ko];
            b += row_lo[ko + half];
            va += row_lo[vo];
            vb += row_lo[vo + half];
        }
        krow[o] = kv_cvt(a * c - b * s);
        krow[o + half] = kv_cvt(b * c + a * s);
        vrow[o] = kv_cvt(va);
        vrow[o + half] = kv_cvt(vb);
    }
}

/* One thread per (row, frequency) of the export; loops over kv heads. */
static __global__ void kv_export_kernel(const kvt *kc, const kvt *vc, int pos0, int n, int nkv,
                                        int hd, const float *inv_freq, float af, float *out)
{
    const int half = hd / 2;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n * half)
        return;
    const int t = idx / half, i = idx % half;
    const int pos = pos0 + t;
    const size_t kvdim = (size_t)nkv * hd;
    const kvt *krow = kc + (size_t)pos * kvdim, *vrow = vc + (size_t)pos * kvdim;
    float *o = out + (size_t)t * 2 * kvdim;
    for (int h = 0; h < nkv; h++) {
        const int e = h * hd + i;
        o[e] = kv_f(krow[e]);
        o[e + half] = kv_f(krow[e + half]);
        o[kvdim + e] = kv_f(vrow[e]);
        o[kvdim + e + half] = kv_f(vrow[e + half]);
    }
}

static __global__ void kv_import_kernel(const float *in, int pos0, int n, int kvdim, kvt *kc,
                                        kvt *vc)
{
    const size_t total = (size_t)n * kvdim;
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (size_t)gridDim.x * blockDim.x) {
        const size_t t = k / kvdim, e = k % kvdim;
        const float *r = in + t * 2 * kvdim;
        kc[(size_t)(pos0 + t) * kvdim + e] = kv_cvt(r[e]);
        vc[(size_t)(pos0 + t) * kvdim + e] = kv_cvt(r[kvdim + e]);
    }
}

static unsigned blocks_for(size_t threads)
{
    return (unsigned)((threads + 255) / 256);
}

cudaError_t kern_rope_qkv(cudaStream_t s, const float *qkv, const float *qkv_lo, int n,
                          int pos0, int nh, int nkv, int hd, const float *inv_freq,
                          float attn_factor, float *q_f32, kvt *q_h, kvt *kc, kvt *vc)
{
    if (n <= 0 || pos0 < 0 || nh <= 0 || nkv <= 0 || hd <= 0 || hd % 2)
        return cudaErrorInvalidValue;
    rope_qkv_kernel<<<blocks_for((size_t)n * (hd / 2)), 256, 0, s>>>(
        qkv, qkv_lo, n, pos0, nh, nkv, hd, inv_freq, attn_factor, q_f32, q_h, kc, vc);
    return cudaGetLastError();
}

cudaError_t kern_kv_export(cudaStream_t s, const kvt *kc, const kvt *vc, int pos0, int n,
                           int nkv, int hd, const float *inv_freq, float attn_factor,
                           float *out)
{
    if (n <= 0 || pos0 < 0 || nkv <= 0 || hd <= 0 || hd % 2 || attn_factor == 0.f)
        return cudaErrorInvalidValue;
    kv_export_kernel<<<blocks_for((size_t)n * (hd / 2)), 256, 0, s>>>(
        kc, vc, pos0, n, nkv, hd, inv_freq, attn_factor, out);
    return cudaGetLastError();
}

cudaError_t kern_kv_import(cudaStream_t s, const float *in, int pos0, int n, int kvdim,
                           kvt *kc, kvt *vc)
{
    if (n <= 0 || pos0 < 0 || kvdim <= 0)
        return cudaErrorInvalidValue;
    size_t b = blocks_for((size_t)n * kvdim);
    kv_import_kernel<<<(unsigned)(b > 65535 ? 65535 : b), 256, 0, s>>>(in, pos0, n, kvdim, kc, vc);
    return cudaGetLastError();
}
