/* embed.cu: embedding gather, bf16 table rows -> float32 residual stream. */
#include "kernels/kernels.cuh"

/* One block per token; threads stride over the hidden dimension. */
static __global__ void embed_kernel(const bf16 *table, const int32_t *ids, int hidden, float *x)
{
    const int t = blockIdx.x;
    const bf16 *row = table + (size_t)ids[t] * hidden;
    float *out = x + (size_t)t * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
        out[i] = __bfloat162float(row[i]);
}

cudaError_t kern_embed(cudaStream_t s, const bf16 *table, const int32_t *ids, int n,
                       int hidden, float *x)
{
    if (n <= 0 || hidden <= 0)
        return cudaErrorInvalidValue;
    embed_kernel<<<n, 256, 0, s>>>(table, ids, hidden, x);
    return cudaGetLastError();
}
