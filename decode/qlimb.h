/* qlimb.h: opt-in decode products of Q4_K, Q5_K and Q6_K weights with integer instructions
 * (PHI3_QUANT_LIMBS=1 on a CPU with AVX-512 VNNI; docs/QUANT.md "Limbs").
 *
 * The exact kernels of qdot.h turn every weight into a float (convert, dequantize FMA,
 * accumulate FMA) and are bound by those vector operations, not by memory. Here the
 * activations are turned into integers instead, once per product: each sub-block of 32
 * is scaled by a power of two 2^k so that its largest magnitude is at most 127, and the
 * scaled value r is written as three signed bytes, r = a1 + a2 2^-7 + a3 2^-14 + e with
 * |a1| <= 127, |a2|, |a3| <= 64, |e| <= 2^-15 (so |x - 2^k (a1 + a2 2^-7 + a3 2^-14)| <=
 * 2^-15 2^k <= max|x| / 2^21 over the sub-block). The weights' 4-bit q multiply the bytes
 * with vpdpbusd, the three limbs combine exactly in 32-bit integers (t = ((q.a1 << 7) +
 * q.a2 << 7) + q.a3), and each sub-block's sum becomes a float once: d sc 2^(k-14) t.
 * The mins use the float sums of the activations' sub-blocks: - dmin m sum(x).
 *
 * So a product differs from the exact one (the weights dequantized to float32) by
 * about 2^-21 of the largest activation of a sub-block times the sum of its |w|, well
 * inside the 1e-5 contract, but it is not the canonical order's bits: a token decoded
 * this way and the same token in a prefill frame (which stays exact) differ in the last
 * bits, so sessions record the path (session.c, "cpu-limbs"). Off by default. */
#ifndef PHI3_QLIMB_H
#define PHI3_QLIMB_H
#include "embed/model.h"
#include <stddef.h>

#define QLIMB_ROWS 8            /* rows of qlimb_rows (at most) */

/* 1 when PHI3_QUANT_LIMBS=1 is set and the CPU has AVX-512 F/BW/VL/DQ and VNNI
 * (qlimb_force overrides: 0 off, 1 on where the CPU allows, 2 the same with the plain C
 * qlimb_prep (tests: it writes the same bytes), -1 back to the environment). */
int qlimb_enabled(void);
void qlimb_force(int on);
/* 1 if qlimb has a kernel for d (Q4_K, Q5_K, Q6_K). */
int qlimb_supported(st_dtype d);
/* Bytes of the prepared activations of n elements (n a multiple of 256). */
size_t qlimb_xbytes(int n);
/* Prepare x[0..n) for qlimb_rows of weights of type d (the byte order depends on d; xp:
 * qlimb_xbytes(n) bytes, 64-byte aligned). */
void qlimb_prep(st_dtype d, const float *x, int n, void *xp);
/* out[r] = (row + r * row_bytes) . x for r < nrows (1..QLIMB_ROWS), x as prepared. Needs
 * qlimb_enabled() (the CPU features). */
void qlimb_rows(st_dtype d, const void *row, size_t row_bytes, int nrows, const void *xp, int n,
                float *out);
/* The same product in plain C from the same prepared activations, in double: what the
 * kernel computes up to float rounding (tests). */
double qlimb_ref(st_dtype d, const void *row, const void *xp, int n);

#endif
