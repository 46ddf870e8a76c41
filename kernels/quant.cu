/* quant.cu: ggml quantized blocks on the GPU: a warp-per-row decode GEMV and a
 * dequantize-to-bf16 kernel for prefill tiles (kernels/quant.cuh). The dequantized value
 * of every weight is the CPU's (embed/quant.c): the same float operations, written with
 * __fmul_rn / __fsub_rn so nvcc does not contract them into FMAs. */
#include "kernels/quant.cuh"

#define QWARPS 8                 /* warps (rows) per block of the GEMV */
#define UNIT 32                  /* weights per unit; a warp takes 32 units per step */

struct qfmt {
    int bs, bb;                  /* weights, bytes per block */
};

static __host__ __device__ qfmt fmt_of(st_dtype t)
{
    switch (t) {
    case ST_Q8_0: return {32, 34};
    case ST_Q4_0: return {32, 18};
    case ST_Q4_K: return {256, 144};
    case ST_Q5_K: return {256, 176};
    case ST_Q6_K: return {256, 210};
    default: return {0, 0};
    }
}

int kern_quant_supported(st_dtype t)
{
    return fmt_of(t).bs != 0;
}

static __device__ __forceinline__ float h2f(const uint8_t *p)
{
    return __half2float(__ushort_as_half((unsigned short)(p[0] | p[1] << 8)));
}

static __device__ __forceinline__ void k_scale_min(const uint8_t *s, int j, int *sc, int *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Weights u*32 .. u*32+31 of the block at b into w[32]. */
template <st_dtype T> static __device__ __forceinline__ void unit_deq(const uint8_t *b, int u, float *w)
{
    if (T == ST_Q8_0) {
        float d = h2f(b);
#pragma unroll
        for (int i = 0; i < 32; i++) w[i] = __fmul_rn((float)(int8_t)b[2 + i], d);
    } else if (T == ST_Q4_0) {
        float d = h2f(b);
#pragma unroll
        for (int i = 0; i < 16; i++) {
            w[i] = __fmul_rn((float)((b[2 + i] & 0xF) - 8), d);
            w[16 + i] = __fmul_rn((float)((b[2 + i] >> 4) - 8), d);
        }
    } else if (T == ST_Q4_K || T == ST_Q5_K) {
        int sc, m;
        k_scale_min(b + 4, u, &sc, &m);
        float d1 = __fmul_rn(h2f(b), (float)sc), m1 = __fmul_rn(h2f(b + 2), (float)m);
        const uint8_t *qs = b + (T == ST_Q5_K ? 48 : 16) + 32 * (u >> 1), *qh = b + 16;
        int sh = 4 * (u & 1);
#pragma unroll
        for (int l = 0; l < 32; l++) {
            int q = (qs[l] >> sh) & 0xF;
            if (T == ST_Q5_K) q += ((qh[l] >> u) & 1) << 4;
            w[l] = __fsub_rn(__fmul_rn(d1, (float)q), m1);
        }
    } else {                     /* Q6_K: u = 4 half + quarter */
        int h = u >> 2, qt = u & 3;
        float d = h2f(b + 208);
        const uint8_t *ql = b + 64 * h + 32 * (qt & 1), *qh = b + 128 + 32 * h;
        const int8_t *sc = (const int8_t *)(b + 192) + 8 * h + 2 * qt;
#pragma unroll
        for (int l = 0; l < 32; l++) {
            int q = (((ql[l] >> (4 * (qt >> 1))) & 0xF) | (((qh[l] >> (2 * qt)) & 3) << 4)) - 32;
            w[l] = __fmul_rn(__fmul_rn(d, (float)sc[l >> 4]), (float)q);
        }
    }
}

/* ---- GEMV ---- */

template <st_dtype T>
static __global__ void __launch_bounds__(QWARPS * 32)
qgemv_kernel(const uint8_t *w, size_t row_bytes, int rows, int cols, const float *x, float *y)
{
    constexpr int BS = T == ST_Q8_0 || T == ST_Q4_0 ? 32 : 256;
    constexpr int BB = T == ST_Q8_0 ? 34 : T == ST_Q4_0 ? 18 : T == ST_Q4_K ? 144 : T == ST_Q5_K ? 176 : 210;
    constexpr int UPB = BS / UNIT;                       /* units per block */
    constexpr int CHUNK = 32 / UPB * BB;                 /* bytes of 32 units */
    __shared__ __align__(16) uint8_t stage[QWARPS][(CHUNK + 15) / 16 * 16];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = blockIdx.x * QWARPS + warp;
    if (r >= rows) return;
    const uint8_t *row = w + (size_t)r * row_bytes;
    uint8_t *sm = stage[warp];
    const int units = cols / UNIT;
    const bool a16 = ((uintptr_t)row & 15) == 0 && CHUNK % 16 == 0;
    float acc = 0.f;
    for (int u0 = 0; u0 < units; u0 += 32) {
        const int nu = units - u0 < 32 ? units - u0 : 32;
        const int nbytes = nu / UPB * BB;
        const uint8_t *src = row + (size_t)(u0 / UPB) * BB;
        if (a16 && nbytes % 16 == 0)
            for (int i = lane; i < nbytes / 16; i += 32) ((uint4 *)sm)[i] = ((const uint4 *)src)[i];
        else if (((uintptr_t)src & 3) == 0 && nbytes % 4 == 0)
            for (int i = lane; i < nbytes / 4; i += 32) ((uint32_t *)sm)[i] = ((const uint32_t *)src)[i];
        else
            for (int i = lane; i < nbytes; i += 32) sm[i] = src[i];
        __syncwarp();
        if (lane < nu) {
            float wv[32];
            unit_deq<T>(sm + (lane / UPB) * BB, lane % UPB, wv);
            const float4 *xv = (const float4 *)(x + (size_t)(u0 + lane) * UNIT);
#pragma unroll
            for (int i = 0; i < 8; i++) {
                float4 v = xv[i];
                acc += wv[4 * i] * v.x + wv[4 * i + 1] * v.y + wv[4 * i + 2] * v.z + wv[4 * i + 3] * v.w;
            }
        }
        __syncwarp();
    }
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) y[r] = acc;
}

cudaError_t kern_qgemv(cudaStream_t s, st_dtype t, const void *w, size_t row_bytes, int rows,
                       int cols, const float *x, float *y)
{
    qfmt f = fmt_of(t);
    if (!f.bs || rows <= 0 || cols <= 0 || cols % f.bs || row_bytes != (size_t)cols / f.bs * f.bb ||
        ((uintptr_t)x & 15))
        return cudaErrorInvalidValue;
    dim3 grid((rows + QWARPS - 1) / QWARPS), block(QWARPS * 32);
    const uint8_t *wb = (const uint8_t *)w;
    switch (t) {
    case ST_Q8_0: qgemv_kernel<ST_Q8_0><<<grid, block, 0, s>>>(wb, row_bytes, rows, cols, x, y); break;
    case ST_Q4_0: qgemv_kernel<ST_Q4_0><<<grid, block, 0, s>>>(wb, row_bytes, rows, cols, x, y); break;
    case ST_Q4_K: qgemv_kernel<ST_Q4_K><<<grid, block, 0, s>>>(wb, row_bytes, rows, cols, x, y); break;
    case ST_Q5_K: qgemv_kernel<ST_Q5_K><<<grid, block, 0, s>>>(wb, row_bytes, rows, cols, x, y); break;
    default: qgemv_kernel<ST_Q6_K><<<grid, block, 0, s>>>(wb, row_bytes, rows, cols, x, y); break;
    }
    return cudaGetLastError();
}

/* ---- dequantize to bf16 ---- */

template <st_dtype T>
static __global__ void qdequant_kernel(const uint8_t *w, size_t row_bytes, int rows, int cols,
                                       __nv_bfloat16 *out)
{
    constexpr int BS = T == ST_Q8_0 || T == ST_Q4_0 ? 32 : 256;
    constexpr int BB = T == ST_Q8_0 ? 34 : T == ST_Q4_0 ? 18 : T == ST_Q4_K ? 144 : T == ST_Q5_K ? 176 : 210;
    constexpr int UPB = BS / UNIT;
    const size_t upr = (size_t)cols / UNIT, id = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (id >= upr * (size_t)rows) return;
    const size_t r = id / upr, u = id % upr;
    float wv[32];
    unit_deq<T>(w + r * row_bytes + (u / UPB) * BB, (int)(u % UPB), wv);
    __nv_bfloat162 *o = (__nv_bfloat162 *)(out + r * (size_t)cols + u * UNIT);
#pragma unroll
    for (int i = 0; i < 16; i++) o[i] = __floats2bfloat162_rn(wv[2 * i], wv[2 * i + 1]);
}

cudaError_t kern_qdequant_bf16(cudaStream_t s, st_dtype t, const void *w, size_t row_bytes,
                               int rows, int cols, __nv_bfloat16 *out)
{
    qfmt f = fmt_of(t);
    if (!f.bs || rows <= 0 || cols <= 0 || cols % f.bs || row_bytes != (size_t)cols / f.bs * f.bb)
        return cudaErrorInvalidValue;
    const size_t n = (size_t)rows * (cols / UNIT);
    const int threads = 256;
    dim3 grid((unsigned)((n + threads - 1) / threads));
    const uint8_t *wb = (const uint8_t *)w;
    switch (t) {
    case ST_Q8_0: qdequant_kernel<ST_Q8_0><<<grid, threads, 0, s>>>(wb, row_bytes, rows, cols, out); break;
    case ST_Q4_0: qdequant_kernel<ST_Q4_0><<<grid, threads, 0, s>>>(wb, row_bytes, rows, cols, out); break;
    case ST_Q4_K: qdequant_kernel<ST_Q4_K><<<grid, threads, 0, s>>>(wb, row_bytes, rows, cols, out); break;
    case ST_Q5_K: qdequant_kernel<ST_Q5_K><<<grid, threads, 0, s>>>(wb, row_bytes, rows, cols, out); break;
    default: qdequant_kernel<ST_Q6_K><<<grid, threads, 0, s>>>(wb, row_bytes, rows, cols, out); break;
    }
    return cudaGetLastError();
}

/* ---- float32 activations for the GEMV from the bf16 product inputs ---- */

static __global__ void pair_f32_kernel(const __nv_bfloat16 *hi, const __nv_bfloat16 *lo, size_t n,
                                       float *out)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = lo ? __bfloat162float(hi[i]) + __bfloat162float(lo[i]) : __bfloat162float(hi[i]);
}

cudaError_t kern_bf16_pair_f32(cudaStream_t s, const __nv_bfloat16 *hi, const __nv_bfloat16 *lo,
                               size_t n, float *out)
{
    if (!n) return cudaSuccess;
    const int threads = 256;
    pair_f32_kernel<<<(unsigned)((n + threads - 1) / threads), threads, 0, s>>>(hi, lo, n, out);
    return cudaGetLastError();
}
