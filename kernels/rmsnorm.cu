/* rmsnorm.cu: RMSNorm in float32 (w * x / sqrt(mean(x^2) + eps)), output rounded to bf16
 * for the next matrix product, optionally as hi + lo halves. */
#include "kernels/kernels.cuh"

#define RMS_THREADS 256

/* One block per row: block-wide sum of squares, then the scaled row. */
static __global__ void __launch_bounds__(RMS_THREADS)
rmsnorm_kernel(const float *x, const float *w, int hidden, float eps, bf16 *hi, bf16 *lo)
{
    __shared__ float part[RMS_THREADS / 32];
    const float *xr = x + (size_t)blockIdx.x * hidden;
    float ss = 0.f;
    for (int i = threadIdx.x; i < hidden; i += RMS_THREADS)
        ss += xr[i] * xr[i];
    for (int off = 16; off > 0; off >>= 1)
        ss += __shfl_xor_sync(0xffffffffu, ss, off);
    if ((threadIdx.x & 31) == 0)
        part[threadIdx.x >> 5] = ss;
    __syncthreads();
    float tot = 0.f;
    for (int i = 0; i < RMS_THREADS / 32; i++)
        tot += part[i];
    const float r = 1.0f / sqrtf(tot / (float)hidden + eps);
    const size_t base = (size_t)blockIdx.x * hidden;
    for (int i = threadIdx.x; i < hidden; i += RMS_THREADS) {
        float v = w[i] * (xr[i] * r);
        bf16 h = __float2bfloat16_rn(v);
        hi[base + i] = h;
        if (lo)
            lo[base + i] = __float2bfloat16_rn(v - __bfloat162float(h));
    }
}

cudaError_t kern_rmsnorm(cudaStream_t s, const float *x, const float *w, int rows, int hidden,
                         float eps, bf16 *hi, bf16 *lo)
{
    if (rows <= 0 || hidden <= 0)
        return cudaErrorInvalidValue;
    rmsnorm_kernel<<<rows, RMS_THREADS, 0, s>>>(x, w, hidden, eps, hi, lo);
    return cudaGetLastError();
}
