/* gpu_bench.cu: the two ceilings of tests/gpu/bench.sh, measured on the card in the same
 * run: device memory READ bandwidth (a reduction over a buffer several times the L2, 16-byte
 * loads), device-to-device copy bandwidth (bytes read + written), and the dense bf16 matrix
 * product rate through cuBLAS (random data, float32 accumulation). Median of repeats, CUDA
 * events, after warm-up. Prints one JSON object on stdout.
 * Build: nvcc -O2 -arch=sm_90 tests/gpu/gpu_bench.cu -lcublas -o gpu_bench
 * usage: gpu_bench [BUFFER_GIB (default 4)] */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#define CK(call)                                                                            \
    do {                                                                                    \
        cudaError_t e_ = (call);                                                            \
        if (e_ != cudaSuccess) {                                                            \
            fprintf(stderr, "gpu_bench: %s: %s (line %d)\n", #call, cudaGetErrorString(e_), \
                    __LINE__);                                                              \
            exit(1);                                                                        \
        }                                                                                   \
    } while (0)

/* Sum of the buffer as 32-bit words, 4 independent 16-byte loads per thread per step. */
static __global__ void read_kernel(const uint4 *p, size_t n, unsigned *sink)
{
    unsigned acc = 0;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + 3 * stride < n; i += 4 * stride) {
        const uint4 a = __ldcs(p + i), b = __ldcs(p + i + stride);
        const uint4 c = __ldcs(p + i + 2 * stride), d = __ldcs(p + i + 3 * stride);
        acc += a.x ^ b.y ^ c.z ^ d.w;
        acc += a.y + b.x + c.w + d.z;
        acc += a.z ^ b.w ^ c.x ^ d.y;
        acc += a.w + b.z + c.y + d.x;
    }
    for (; i < n; i += stride) {
        const uint4 a = __ldcs(p + i);
        acc += a.x + a.y + a.z + a.w;
    }
    if (acc == 0x12345678u)              /* practically never: keeps the loads */
        *sink = acc;
}

static __global__ void fill_kernel(unsigned *p, size_t n, unsigned seed)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        unsigned x = (unsigned)i * 2654435761u ^ seed;
        x ^= x >> 13;
        x *= 0x5bd1e995u;
        x ^= x >> 15;
        p[i] = x;
    }
}

/* bf16 in [-1, 1) from a hash (random data: zeros run faster). */
static __global__ void fill_bf16(__nv_bfloat16 *p, size_t n, unsigned seed)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        unsigned x = (unsigned)i * 2654435761u ^ seed;
        x ^= x >> 13;
        x *= 0x5bd1e995u;
        x ^= x >> 15;
        p[i] = __float2bfloat16((float)(x >> 8) * (2.0f / 16777216.0f) - 1.0f);
    }
}

static int cmpf(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

static float median(float *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmpf);
    return v[n / 2];
}

int main(int argc, char **argv)
{
    const double gib = argc > 1 ? atof(argv[1]) : 4.0;
    if (!(gib > 0.01 && gib < 64)) {
        fprintf(stderr, "gpu_bench: buffer size %s GiB out of range\n", argv[1]);
        return 2;
    }
    const size_t bytes = (size_t)(gib * 1073741824.0) / 64 * 64;
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    enum { REPS = 9 };
    float t[REPS];

    /* read bandwidth */
    unsigned *buf, *dst, *sink;
    CK(cudaMalloc((void **)&buf, bytes));
    CK(cudaMalloc((void **)&sink, 4));
    fill_kernel<<<4 * prop.multiProcessorCount, 256>>>(buf, bytes / 4, 12345u);
    CK(cudaGetLastError());
    const int rblocks = prop.multiProcessorCount * 8;
    for (int w = 0; w < 2; w++)
        read_kernel<<<rblocks, 256>>>((const uint4 *)buf, bytes / 16, sink);
    for (int r = 0; r < REPS; r++) {
        CK(cudaEventRecord(e0));
        read_kernel<<<rblocks, 256>>>((const uint4 *)buf, bytes / 16, sink);
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&t[r], e0, e1));
    }
    CK(cudaGetLastError());
    const double read_tbps = bytes / (median(t, REPS) * 1e-3) / 1e12;

    /* copy bandwidth: half the buffer to a second buffer, bytes read + written */
    CK(cudaMalloc((void **)&dst, bytes / 2));
    for (int w = 0; w < 2; w++)
        CK(cudaMemcpy(dst, buf, bytes / 2, cudaMemcpyDeviceToDevice));
    for (int r = 0; r < REPS; r++) {
        CK(cudaEventRecord(e0));
        CK(cudaMemcpyAsync(dst, buf, bytes / 2, cudaMemcpyDeviceToDevice));
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&t[r], e0, e1));
    }
    const double copy_tbps = bytes / (median(t, REPS) * 1e-3) / 1e12;
    CK(cudaFree(dst));
    CK(cudaFree(buf));

    /* bf16 GEMM rate: 8192^3 (and the 4096-token qkv shape of Phi-3-mini) */
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "gpu_bench: cublasCreate failed\n");
        return 1;
    }
    const int shapes[2][3] = {{8192, 8192, 8192}, {9216, 4096, 3072}};   /* m, n, k */
    double tflops[2];
    for (int sh = 0; sh < 2; sh++) {
        const int m = shapes[sh][0], n = shapes[sh][1], k = shapes[sh][2];
        __nv_bfloat16 *A, *B;
        float *C;
        CK(cudaMalloc((void **)&A, (size_t)m * k * 2));
        CK(cudaMalloc((void **)&B, (size_t)k * n * 2));
        CK(cudaMalloc((void **)&C, (size_t)m * n * 4));
        fill_bf16<<<1024, 256>>>(A, (size_t)m * k, 1u);
        fill_bf16<<<1024, 256>>>(B, (size_t)k * n, 2u);
        CK(cudaGetLastError());
        const float alpha = 1.f, beta = 0.f;
        cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
        for (int r = -2; r < REPS && st == CUBLAS_STATUS_SUCCESS; r++) {
            CK(cudaEventRecord(e0));
            st = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, A, CUDA_R_16BF, k, B,
                              CUDA_R_16BF, k, &beta, C, CUDA_R_32F, m, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT);
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            if (r >= 0)
                CK(cudaEventElapsedTime(&t[r], e0, e1));
        }
        if (st != CUBLAS_STATUS_SUCCESS) {
            fprintf(stderr, "gpu_bench: cublasGemmEx: %s\n", cublasGetStatusString(st));
            return 1;
        }
        tflops[sh] = 2.0 * m * n * k / (median(t, REPS) * 1e-3) / 1e12;
        CK(cudaFree(A));
        CK(cudaFree(B));
        CK(cudaFree(C));
    }
    cublasDestroy(h);
    printf("{\"device\": \"%s\", \"sm\": %d, \"l2_MB\": %.1f, \"buffer_GB\": %.3f, "
           "\"read_TBps\": %.4f, \"copy_TBps\": %.4f, \"gemm_TFLOPs\": %.1f, "
           "\"gemm_qkv4096_TFLOPs\": %.1f}\n",
           prop.name, prop.multiProcessorCount, prop.l2CacheSize / 1e6, bytes / 1e9, read_tbps,
           copy_tbps, tflops[0], tflops[1]);
    return 0;
}
