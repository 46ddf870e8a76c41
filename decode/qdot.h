/* qdot.h: CPU dot products of one quantized weight row (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K;
 * embed/quant.h) with float32 activations, in the CPU backend's canonical order:
 *   acc[0..8) = 0; for k = 0, 8, .. (k + 8 <= n): acc[j] = fmaf(w[k+j], x[k+j], acc[j]);
 *   r = ((acc0+acc1)+(acc2+acc3))+((acc4+acc5)+(acc6+acc7)); tail: r = fmaf(w[k], x[k], r)
 * where w is the row dequantized exactly (quant_dequant_row). So every variant here
 * (AVX2/FMA or portable, one row, several rows, several tokens) returns the bits the
 * same dot gives on the weights dequantized to float32. n must be a multiple of the
 * block size (so there is never a tail). */
#ifndef PHI3_QDOT_H
#define PHI3_QDOT_H
#include "decode/gemm.h"
#include "embed/model.h"
#include <stddef.h>

#define QDOT_ROWS 8             /* rows of qdot_rows (at most) */
#define QDOT_TOKENS 4           /* tokens of qdot_tokens (at most) */

/* 1 if d has kernels here (the block types). */
int qdot_supported(st_dtype d);
/* 1 when the AVX2/FMA/F16C kernels are used (CPU has them and PHI3_NO_AVX is unset). */
int qdot_avx(void);
/* The kernels in use: 0 portable, 1 AVX2/FMA, 2 AVX2 plus AVX-512 for qdot_rows (CPU has
 * AVX-512 F/BW/VL/DQ, PHI3_NO_AVX512 unset). qdot_set_level lowers it (tests, benchmarks:
 * every level gives the same bits) or raises it back to what the CPU has; returns it. */
int qdot_level(void);
int qdot_set_level(int level);
/* Level 2 has two Q8_0 row kernels with the same bits: rows paired in zmm halves (1; the
 * default except on AMD's CPUs) and 8-lane chains in ymm (0); -1 picks as at start
 * (PHI3_Q8_0_KERNEL=paired|ymm, else by vendor). Returns the one in use (tests). */
int qdot_q8_0_kernel(int paired);

/* row . x over n elements. */
float qdot(st_dtype d, const void *row, const float *x, int n);
/* out[r] = (row + r * row_bytes) . x for r < nrows (1..QDOT_ROWS): the rows share the
 * loads of x and interleave their FMA chains (the decode path). */
void qdot_rows(st_dtype d, const void *row, size_t row_bytes, int nrows, const float *x, int n,
               float *out);
/* out[t] = row . (x + t * ldx) for t < ntok (1..QDOT_TOKENS): each weight is dequantized
 * once for all the tokens (the prefill path). */
void qdot_tokens(st_dtype d, const void *row, const float *x, size_t ldx, int ntok, int n, float *out);

/* Kernels of a block type for decode/gemm.h's blocked many-token path (cvt dequantizes
 * block-aligned panels exactly), at min(qdot_level(), gemm_vec_level()); NULL if d is not
 * a block type. */
const gemm_ops *qdot_gemm_ops(st_dtype d);

/* The portable path (plain C with fmaf), whatever the CPU: the reference the tests
 * compare the AVX kernels with. */
float qdot_portable(st_dtype d, const void *row, const float *x, int n);

#endif
