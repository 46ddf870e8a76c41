/* swiglu.cu: the gated MLP activation, up * silu(gate), from the fused gate_up product. */
#include "kernels/kernels.cuh"

static __global__ void swiglu_kernel(const float *gu, const float *gu_lo, int n, int inter,
                                     bf16 *hi, bf16 *lo)
{
    const size_t total = (size_t)n * inter;
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (size_t)gridDim.x * blockDim.x) {
        const size_t t = k / inter, j = k % inter;
        const size_t gi = t * 2 * inter + j, ui = gi + inter;   /* gate first, then up */
        float g = gu[gi], u = gu[ui];
        if (gu_lo) {
            g += gu_lo[gi];
            u += gu_lo[ui];
        }
        float v = u * (g / (1.0f + expf(-g)));
        bf16 h = __float2bfloat16_rn(v);
        hi[k] = h;
        if (lo)
            lo[k] = __float2bfloat16_rn(v - __bfloat162float(h));
    }
}

cudaError_t kern_swiglu(cudaStream_t s, const float *gu, const float *gu_lo, int n, int inter,
                        bf16 *hi, bf16 *lo)
{
    if (n <= 0 || inter <= 0)
        return cudaErrorInvalidValue;
    size_t total = (size_t)n * inter;
    size_t blocks = (total + 255) / 256;
    if (blocks > 65535)
        blocks = 65535;           /* grid-stride loop covers the rest */
    swiglu_kernel<<<(unsigned)blocks, 256, 0, s>>>(gu, gu_lo, n, inter, hi, lo);
    return cudaGetLastError();
}
