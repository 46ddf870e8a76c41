/* residual.cu: element-wise float32 adds (residual stream, hi + lo product halves) and the
 * float32 -> bf16 (hi, lo) split that feeds a matrix product. */
#include "kernels/kernels.cuh"

static unsigned grid_for(size_t n)
{
    size_t b = (n + 255) / 256;
    return (unsigned)(b > 65535 ? 65535 : b);      /* grid-stride loops cover the rest */
}

static __global__ void residual_kernel(float *x, const float *a, const float *b, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] += b ? a[i] + b[i] : a[i];
}

static __global__ void add_kernel(float *out, const float *a, const float *b, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

static __global__ void split_kernel(const float *x, bf16 *hi, bf16 *lo, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        bf16 h = __float2bfloat16_rn(x[i]);
        hi[i] = h;
        if (lo)
            lo[i] = __float2bfloat16_rn(x[i] - __bfloat162float(h));
    }
}

cudaError_t kern_residual_add(cudaStream_t s, float *x, const float *a, const float *b, size_t n)
{
    if (n == 0)
        return cudaErrorInvalidValue;
    residual_kernel<<<grid_for(n), 256, 0, s>>>(x, a, b, n);
    return cudaGetLastError();
}

cudaError_t kern_add(cudaStream_t s, float *out, const float *a, const float *b, size_t n)
{
    if (n == 0)
        return cudaErrorInvalidValue;
    add_kernel<<<grid_for(n), 256, 0, s>>>(out, a, b, n);
    return cudaGetLastError();
}

cudaError_t kern_split_bf16(cudaStream_t s, const float *x, bf16 *hi, bf16 *lo, size_t n)
{
    if (n == 0)
        return cudaErrorInvalidValue;
    split_kernel<<<grid_for(n), 256, 0, s>>>(x, hi, lo, n);
    return cudaGetLastError();
}
