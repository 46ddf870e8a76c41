/* gemm.h: weight-row . activation products of the CPU backend, in ONE canonical order
 * shared by every path (one token or many, AVX2, AVX-512 or scalar), so that a prompt's
 * results never depend on how it is split into frames, on the thread count, or on the
 * instruction set used:
 *
 *   acc[j] = 0 for the 8 lanes j = 0..7;
 *   for k = 0, 8, 16, ... while k + 8 <= n:  acc[j] = fmaf(w[k + j], x[k + j], acc[j]);
 *   r = ((acc0 + acc1) + (acc2 + acc3)) + ((acc4 + acc5) + (acc6 + acc7));
 *   for the tail k = n & ~7 .. n - 1 in ascending order:  r = fmaf(w[k], x[k], r).
 *
 * w[k] is the weight as float32 (bf16/f16 convert exactly; quantized formats dequantize
 * each element to float32 first). One 8-lane accumulator per output: dot4 hides the
 * FMA latency by doing 4 rows at once, the few-token path (gemm_rows, 1 .. 64 tokens) by
 * a register tile of several rows x several tokens whose weights are converted in
 * registers, the many-token path by such tiles over weight panels converted to float32
 * once per row block. */
#ifndef PHI3_GEMM_H
#define PHI3_GEMM_H
#include "embed/model.h"
#include <stddef.h>
#include <stdint.h>

#define GEMM_MB 16              /* rows per block: the unit of work the thread pool shares */
#define GEMM_NB 256             /* tokens per pass over a row block */
#define GEMM_KC 512             /* columns per packed panel (a multiple of 256: quant blocks) */

typedef struct gemm_ops {
    /* one row . one token, canonical order */
    float (*dot)(const void *w, const float *x, int n);
    /* four rows (w, w + row_bytes, ...) . one token -> out[0..4), canonical order each */
    void (*dot4)(const void *w, size_t row_bytes, const float *x, int n, float *out);
    /* dst[i] = w[k0 + i] as float32 for i < n (k0 a multiple of GEMM_KC) */
    void (*cvt)(const void *w, int k0, int n, float *dst);
    int vec;                    /* 0 scalar, 1 AVX2 (ymm), 2 AVX-512 F/DQ/BW/VL (zmm pairs of 8 lanes) */
    int blk, blk_bytes;         /* quantized: weights and bytes per block (0: not blocks) */
    /* optional: what cvt gives, written straight into a panel row: floats 8s..8s+8 at
     * dst + 32 s (the many-token path's layout); NULL: cvt, then copied */
    void (*panel)(const void *w, int k0, int n, float *dst);
} gemm_ops;

/* Kernels for weights of dtype d on this CPU (PHI3_NO_AVX=1: scalar; PHI3_NO_AVX512=1:
 * AVX2 at most). NULL for a dtype without kernels. */
const gemm_ops *gemm_ops_for(st_dtype d);
int gemm_vec_level(void);       /* 0, 1, 2 as above */
/* The kernels of a given level (capped at what the CPU has), for tests. */
const gemm_ops *gemm_ops_level(st_dtype d, int level);

/* Floats of scratch one thread needs for gemm_rows. */
size_t gemm_scratch_floats(void);

/* out[t * ldo + r] = W[r] . x[t * ldx] for rows r in [r0, r1) and tokens t < n, where row
 * r has K columns at w + r * row_bytes. Single-threaded; the caller splits rows. */
void gemm_rows(const gemm_ops *op, const uint8_t *w, size_t row_bytes, int K, int r0, int r1,
               const float *x, size_t ldx, int n, float *out, size_t ldo, float *scratch);

/* The same, with x also packed by gemm_pack_x into xq (or NULL): 7..12 tokens on
 * AVX-512 then take a register tile whose FMAs read x from memory (same bits). The
 * caller packs once per product, not once per call. */
void gemm_rows_xq(const gemm_ops *op, const uint8_t *w, size_t row_bytes, int K, int r0, int r1,
                  const float *x, size_t ldx, int n, float *out, size_t ldo, float *scratch, const float *xq);
/* Floats gemm_pack_x writes for n tokens of K columns; 0 where gemm_rows_xq has no use
 * for them (then gemm_pack_x writes nothing). */
size_t gemm_xq_floats(const gemm_ops *op, int n, int K);
void gemm_pack_x(const gemm_ops *op, const float *x, size_t ldx, int n, int K, float *xq);

/* The most tokens gemm_rows gives the few-token path (registers only, no panel); more
 * take the blocked path. n < 0: the default (64); 0: never (one token: dot4 per 4 rows;
 * benchmarks and tests: every path gives the same bits). Not thread-safe: set it before any gemm_rows call. */
void gemm_set_small_max(int n);
int gemm_get_small_max(void);

/* dst[i] = src[i] as IEEE half, round to nearest even (F16C or the same in C; NaN stays
 * a quiet NaN with the top of its payload, as F16C does). */
void gemm_f32_to_f16(const float *src, uint16_t *dst, int n);

/* e^x for x <= 0 (attention's softmax), one fixed sequence of float operations: n =
 * nearest integer to x log2(e), r = x - n ln2 (two fmaf steps), a Taylor
 * polynomial in r (degree 7) by fmaf Horner, times 2^n built from bits; 0 below -87, NaN stays NaN,
 * x > 0 is clamped to 88. Within 2 ulp of e^x; the vector and scalar forms give the same
 * bits. gemm_exp_sub: s[i] = gemm_exp(s[i] - m) for i < n. */
float gemm_exp(float x);
void gemm_exp_sub(float *s, int n, float m);

/* Canonical-order dot of two float32 vectors (attention scores). */
float gemm_dot_f32(const float *a, const float *b, int n);

#endif
