/* quant.cuh: CUDA kernels for ggml's quantized weight blocks (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K;
 * layouts in embed/quant.h), used by the CUDA backend for quantized models when
 * PHI3_CUDA_QUANT=1 (opt-in: compiled, not yet run on a GPU). Weights are rows of row_bytes bytes,
 * each row whole blocks; x and y float32; all pointers device memory. */
#ifndef PHI3_QUANT_CUH
#define PHI3_QUANT_CUH
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "embed/model.h"
}

/* 1 if t has kernels here. */
int kern_quant_supported(st_dtype t);

/* Decode GEMV: y[r] = W[r] . x for r < rows, cols columns (a multiple of the block size).
 * One warp per row: the warp stages 32 units of 32 weights of its row in shared memory
 * with 16-byte loads (4-byte when the row is not 16-byte aligned), then each lane
 * dequantizes one unit and dots it with x; a shuffle reduction ends the row. */
cudaError_t kern_qgemv(cudaStream_t s, st_dtype t, const void *w, size_t row_bytes, int rows,
                       int cols, const float *x, float *y);

/* Prefill tiles: out[r][c] = bf16(w[r][c]) for rows x cols (the float value is exactly
 * the CPU's quant_dequant_row, then rounded to nearest bf16), ready for the tensor-core
 * bf16 GEMM. One thread per 32 weights. */
cudaError_t kern_qdequant_bf16(cudaStream_t s, st_dtype t, const void *w, size_t row_bytes,
                               int rows, int cols, __nv_bfloat16 *out);

/* out[i] = float(hi[i]) + float(lo[i]) (lo NULL: + 0) for i < n: the float32 activation a
 * split product input (hi + lo bf16 halves) stands for, as the GEMV's x. */
cudaError_t kern_bf16_pair_f32(cudaStream_t s, const __nv_bfloat16 *hi, const __nv_bfloat16 *lo,
                               size_t n, float *out);

#endif
