/* qdot.c: dot products of quantized weight rows with float32 activations (qdot.h):
 * the portable path (dequantize a block, fmaf lanes) and AVX2/FMA kernels that
 * dequantize 32 weights at a time into four ymm registers with the same float
 * operations as embed/quant.c and feed them straight to the FMAs.
 *
 * Every kernel walks a row in "units" of 32 weights (a Q8_0/Q4_0 block, a K-quant
 * sub-block of 32); weights k..k+8 of the row always go to the 8 lanes of one
 * accumulator, in increasing k, so all variants share one operation order. */
#include "decode/qdot.h"
#include "decode/simd.h"
#include "embed/quant.h"
#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int qdot_supported(st_dtype d)
{
    return quant_is_block(d);
}

/* 0 portable, 1 AVX2/FMA/F16C, 2 also AVX-512 (F, BW, VL, DQ) for the decode rows;
 * PHI3_NO_AVX (everything) and PHI3_NO_AVX512 step down. */
static int cpu_level(void)
{
    static int lv = -1;
    if (lv < 0) {
        unsigned ea, eb, ec, ed;
        __builtin_cpu_init();
        lv = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __get_cpuid(1, &ea, &eb, &ec, &ed) && (ec & bit_F16C) && !getenv("PHI3_NO_AVX");
        if (lv && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && !getenv("PHI3_NO_AVX512"))
            lv = 2;
    }
    return lv;
}

static int level = -1;

int qdot_level(void)
{
    if (level < 0) level = cpu_level();
    return level;
}

int qdot_set_level(int lv)
{
    level = lv < 0 ? 0 : lv > cpu_level() ? cpu_level() : lv;
    return level;
}

int qdot_avx(void)
{
    return qdot_level() >= 1;
}

static float reduce8(const float *l)
{
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

/* ---- portable ---- */

float qdot_portable(st_dtype d, const void *row, const float *x, int n)
{
    int bs = quant_block_size(d);
    float w[QK_K], acc[8] = {0};
    for (int k0 = 0; k0 < n; k0 += bs) {
        quant_dequant_row(d, row, w, k0, bs);
        for (int k = 0; k < bs; k += 8)
            for (int j = 0; j < 8; j++) acc[j] = fmaf(w[k + j], x[k0 + k + j], acc[j]);
    }
    return reduce8(acc);
}

/* ---- AVX2 ----
 * A block's scales are decoded once per row into floats (bscale), then each unit of 32
 * weights is dequantized into four ymm registers.
 * Exactness of the fused forms: an f16 value has an 11-bit significand, so d*sc (6-bit
 * K-quant sc, or |sc| <= 128 for Q6_K) and dmin*m fit in 18 bits and are exact in
 * float; times a 4- or 5-bit q it stays within 23 bits, still exact. Hence ggml's
 * (d*sc)*q - (dmin*m), one rounding in the subtraction, equals fma(d*sc, q, -(dmin*m)),
 * and (d*sc) * (q - 32) (Q6_K) and q*d (Q8_0) are plain products. Q4_0's (q - 8)*d
 * is one too (q - 8 in integers): fma(q, d, -8 d) has the same value except at q = 8
 * with d < 0, where it gives +0 for ggml's -0. */

#define AVX __attribute__((target("avx2,fma,f16c"), always_inline)) static inline

typedef struct bscale {
    _Alignas(32) float s[16];   /* per unit (Q6_K: per 16 weights) d * sc */
    _Alignas(32) float m[8];    /* per unit -(dmin * m) (K types) */
} bscale;

AVX float h2f(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

AVX __m256 cvt_u8(__m128i v)     /* low 8 bytes (unsigned) -> 8 floats */
{
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
}

AVX __m256 cvt_i8(__m128i v)     /* low 8 bytes (signed) -> 8 floats */
{
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
}

AVX void prep_q8_0(const uint8_t *b, bscale *p)
{
    p->s[0] = h2f(b);
}

AVX void unit_q8_0(const uint8_t *b, int u, const bscale *p, __m256 *w)
{
    (void)u;
    __m256 d = _mm256_set1_ps(p->s[0]);
    UNROLL(4) for (int i = 0; i < 4; i++)
        w[i] = _mm256_mul_ps(cvt_i8(_mm_loadl_epi64((const __m128i *)(b + 2 + 8 * i))), d);
}

#define prep_q4_0 prep_q8_0

/* (q - 8) * d: q - 8 in integers, then one product */
AVX void unit_q4_0(const uint8_t *b, int u, const bscale *p, __m256 *w)
{
    (void)u;
    __m256 d = _mm256_set1_ps(p->s[0]);
    __m256i m = _mm256_set1_epi32(0xF), c8 = _mm256_set1_epi32(8);
    __m256i v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2)));
    __m256i v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b + 10)));
    w[0] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(v0, m), c8)), d);
    w[1] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(v1, m), c8)), d);
    w[2] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(v0, 4), c8)), d);
    w[3] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(v1, 4), c8)), d);
}

/* The 8 6-bit (sc, m) pairs from 12 bytes with 32-bit word operations (bytes 0-3: sc
 * 0-3 and the top bits of sc 4-7; 4-7: m 0-3 and the top bits of m 4-7; 8-11: the low
 * nibbles of sc 4-7 and m 4-7), then 8 at a time to floats. */
AVX void k45_scales(const uint8_t *b, __m256 *ds, __m256 *mn)
{
    uint32_t w[3];
    memcpy(w, b + 4, 12);
    uint32_t sc_lo = w[0] & 0x3f3f3f3fu, m_lo = w[1] & 0x3f3f3f3fu;
    uint32_t sc_hi = (w[2] & 0x0f0f0f0fu) | ((w[0] >> 6) & 0x03030303u) << 4;
    uint32_t m_hi = ((w[2] >> 4) & 0x0f0f0f0fu) | ((w[1] >> 6) & 0x03030303u) << 4;
    __m256 d = _mm256_set1_ps(h2f(b)), dmin = _mm256_set1_ps(h2f(b + 2));
    __m256 sc = cvt_u8(_mm_set_epi32(0, 0, (int)sc_hi, (int)sc_lo)), m = cvt_u8(_mm_set_epi32(0, 0, (int)m_hi, (int)m_lo));
    *ds = _mm256_mul_ps(d, sc);
    /* -(dmin * m): the product is exact, negation too */
    *mn = _mm256_xor_ps(_mm256_mul_ps(dmin, m), _mm256_set1_ps(-0.0f));
}

AVX void prep_k45(const uint8_t *b, bscale *p)
{
    __m256 ds, mn;
    k45_scales(b, &ds, &mn);
    _mm256_storeu_ps(p->s, ds);
    _mm256_storeu_ps(p->m, mn);
}

#define prep_q4_k prep_k45
#define prep_q5_k prep_k45

/* Q4_K sub-block u: nibbles of qs[32(u/2)..], low for even u, high for odd: widened
 * from memory 8 bytes at a time, then masked or shifted. */
AVX void unit_q4_k(const uint8_t *b, int u, const bscale *p, __m256 *w)
{
    __m256 d1 = _mm256_set1_ps(p->s[u]), m1 = _mm256_set1_ps(p->m[u]);
    const uint8_t *qs = b + 16 + 32 * (u >> 1);
    UNROLL(4) for (int i = 0; i < 4; i++) {
        __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8 * i)));
        v = u & 1 ? _mm256_srli_epi32(v, 4) : _mm256_and_si256(v, _mm256_set1_epi32(0xF));
        w[i] = _mm256_fmadd_ps(d1, _mm256_cvtepi32_ps(v), m1);
    }
}

/* Q5_K: as Q4_K, with the fifth bit (bit u of qh[l]) merged at byte level first: the 32
 * q of unit u as bytes. */
AVX __m256i q5_bytes(const uint8_t *b, int u)
{
    __m256i v = _mm256_loadu_si256((const __m256i *)(b + 48 + 32 * (u >> 1)));
    v = _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(4 * (u & 1))), _mm256_set1_epi8(0xF));
    __m256i bit = _mm256_set1_epi8((char)(1 << u));
    __m256i h = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)(b + 16)), bit), bit);
    return _mm256_or_si256(v, _mm256_and_si256(h, _mm256_set1_epi8(16)));
}

AVX void unit_q5_k(const uint8_t *b, int u, const bscale *p, __m256 *w)
{
    __m256 d1 = _mm256_set1_ps(p->s[u]), m1 = _mm256_set1_ps(p->m[u]);
    __m256i v = q5_bytes(b, u);
    __m128i a = _mm256_castsi256_si128(v), c = _mm256_extracti128_si256(v, 1);
    w[0] = _mm256_fmadd_ps(d1, cvt_u8(a), m1);
    w[1] = _mm256_fmadd_ps(d1, cvt_u8(_mm_srli_si128(a, 8)), m1);
    w[2] = _mm256_fmadd_ps(d1, cvt_u8(c), m1);
    w[3] = _mm256_fmadd_ps(d1, cvt_u8(_mm_srli_si128(c, 8)), m1);
}

AVX void prep_q6_k(const uint8_t *b, bscale *p)
{
    __m256 d = _mm256_set1_ps(h2f(b + 208));
    __m128i sc = _mm_loadu_si128((const __m128i *)(b + 192));
    _mm256_storeu_ps(p->s, _mm256_mul_ps(d, cvt_i8(sc)));
    _mm256_storeu_ps(p->s + 8, _mm256_mul_ps(d, cvt_i8(_mm_srli_si128(sc, 8))));
}

/* Q6_K unit u = 4h + quarter: elements 32 quarter.. of half h; low 4 bits from
 * ql[64h + 32 (quarter & 1) + l] (high nibble for quarter >= 2), 2 high bits at bit
 * 2 quarter of qh[32h + l]; scales 8h + 2 quarter and the next; w = (d*sc) * (q - 32). */
AVX __m256i q6_bytes(const uint8_t *b, int u)     /* the 32 q - 32 of unit u as signed bytes */
{
    int h = u >> 2, qt = u & 3;
    __m256i lo = _mm256_loadu_si256((const __m256i *)(b + 64 * h + 32 * (qt & 1)));
    lo = _mm256_and_si256(_mm256_srl_epi16(lo, _mm_cvtsi32_si128(4 * (qt >> 1))), _mm256_set1_epi8(0xF));
    __m256i hb = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h));
    hb = _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * qt)), _mm256_set1_epi8(3));
    return _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hb, 4)), _mm256_set1_epi8(32));
}

AVX void unit_q6_k(const uint8_t *b, int u, const bscale *p, __m256 *w)
{
    __m256 s0 = _mm256_set1_ps(p->s[2 * u]), s1 = _mm256_set1_ps(p->s[2 * u + 1]);
    __m256i q = q6_bytes(b, u);
    __m128i a = _mm256_castsi256_si128(q), c = _mm256_extracti128_si256(q, 1);
    w[0] = _mm256_mul_ps(s0, cvt_i8(a));
    w[1] = _mm256_mul_ps(s0, cvt_i8(_mm_srli_si128(a, 8)));
    w[2] = _mm256_mul_ps(s1, cvt_i8(c));
    w[3] = _mm256_mul_ps(s1, cvt_i8(_mm_srli_si128(c, 8)));
}

AVX float hsum(__m256 a)
{
    float l[8];
    _mm256_storeu_ps(l, a);
    return reduce8(l);
}

/* Decode reads QDOT_ROWS weight rows at once: interleaved streams that the hardware
 * prefetcher serves poorly (decode/gemm.c saw it with 4 bf16 rows; here 8 rows ran at
 * half the speed of one out of cache). Rows are contiguous, so while a call walks block
 * k of its rows it prefetches block k of the next QDOT_ROWS rows, which the next call
 * (or the next thread's chunk) reads: every line once, in order. Prefetches never
 * fault, even past the end of the weights. */
AVX void pf_rows(const uint8_t *b, size_t rb, int bb)
{
    UNROLL(8) for (int r = 0; r < QDOT_ROWS; r++)
        for (int o = 0; o < bb; o += 64) _mm_prefetch((const char *)(b + (QDOT_ROWS + r) * rb + o), _MM_HINT_T0);
}

/* The three kernel shapes for one type T with BS weights / BB bytes per block: one row;
 * QDOT_ROWS rows sharing x (their FMA chains interleave); QDOT_TOKENS tokens sharing each
 * dequantized weight. */
#define GEN(T, BS, BB)                                                                          \
    __attribute__((target("avx2,fma,f16c"))) static float dot_##T(const void *row, const float *x, int n) \
    {                                                                                           \
        const uint8_t *b = row;                                                                 \
        __m256 acc = _mm256_setzero_ps(), w[4];                                                 \
        bscale p;                                                                               \
        for (int k0 = 0; k0 < n; k0 += BS, b += BB) {                                           \
            prep_##T(b, &p);                                                                    \
            for (int u = 0; u < BS / 32; u++) {                                                 \
                unit_##T(b, u, &p, w);                                                          \
                UNROLL(4) for (int i = 0; i < 4; i++)                                           \
                    acc = _mm256_fmadd_ps(w[i], _mm256_loadu_ps(x + k0 + 32 * u + 8 * i), acc); \
            }                                                                                   \
        }                                                                                       \
        return hsum(acc);                                                                       \
    }                                                                                           \
    __attribute__((target("avx2,fma,f16c"))) static void rows_##T(const void *row, size_t rb, int nr, \
                                                                 const float *x, int n, float *out) \
    {                                                                                           \
        if (nr < QDOT_ROWS) {                                                                   \
            for (int r = 0; r < nr; r++) out[r] = dot_##T((const uint8_t *)row + r * rb, x, n); \
            return;                                                                             \
        }                                                                                       \
        const uint8_t *b = row;                                                                 \
        __m256 acc[QDOT_ROWS], w[4];                                                            \
        bscale p[QDOT_ROWS];                                                                    \
        UNROLL(8) for (int r = 0; r < QDOT_ROWS; r++) acc[r] = _mm256_setzero_ps();             \
        for (int k0 = 0; k0 < n; k0 += BS, b += BB) {                                           \
            pf_rows(b, rb, BB);                                                                 \
            UNROLL(8) for (int r = 0; r < QDOT_ROWS; r++) prep_##T(b + r * rb, &p[r]);          \
            for (int u = 0; u < BS / 32; u++) {                                                 \
                const float *xk = x + k0 + 32 * u;                                              \
                UNROLL(8) for (int r = 0; r < QDOT_ROWS; r++) {                                 \
                    unit_##T(b + r * rb, u, &p[r], w);                                          \
                    UNROLL(4) for (int i = 0; i < 4; i++)                                       \
                        acc[r] = _mm256_fmadd_ps(w[i], _mm256_loadu_ps(xk + 8 * i), acc[r]);    \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
        UNROLL(8) for (int r = 0; r < QDOT_ROWS; r++) out[r] = hsum(acc[r]);                    \
    }                                                                                           \
    __attribute__((target("avx2,fma,f16c"))) static void toks_##T(const void *row, const float *x, \
                                                                 size_t ldx, int nt, int n, float *out) \
    {                                                                                           \
        if (nt < QDOT_TOKENS) {                                                                 \
            for (int t = 0; t < nt; t++) out[t] = dot_##T(row, x + t * ldx, n);                 \
            return;                                                                             \
        }                                                                                       \
        const uint8_t *b = row;                                                                 \
        __m256 acc[QDOT_TOKENS], w[4];                                                          \
        bscale p;                                                                               \
        UNROLL(8) for (int t = 0; t < QDOT_TOKENS; t++) acc[t] = _mm256_setzero_ps();           \
        for (int k0 = 0; k0 < n; k0 += BS, b += BB) {                                           \
            prep_##T(b, &p);                                                                    \
            for (int u = 0; u < BS / 32; u++) {                                                 \
                unit_##T(b, u, &p, w);                                                          \
                UNROLL(4) for (int i = 0; i < 4; i++)                                           \
                    UNROLL(8) for (int t = 0; t < QDOT_TOKENS; t++)                             \
                        acc[t] = _mm256_fmadd_ps(w[i], _mm256_loadu_ps(x + t * ldx + k0 + 32 * u + 8 * i), acc[t]); \
            }                                                                                   \
        }                                                                                       \
        UNROLL(8) for (int t = 0; t < QDOT_TOKENS; t++) out[t] = hsum(acc[t]);                  \
    }

GEN(q8_0, QK8_0, Q8_0_BYTES)
GEN(q4_0, QK4_0, Q4_0_BYTES)
GEN(q4_k, QK_K, Q4_K_BYTES)
GEN(q5_k, QK_K, Q5_K_BYTES)
GEN(q6_k, QK_K, Q6_K_BYTES)

/* ---- AVX-512: two rows per zmm ----
 * Lanes 0-7 of a zmm accumulator are row A's 8 canonical lanes, lanes 8-15 row B's:
 * one 16-lane FMA advances both rows by one group of 8 weights with x broadcast to both
 * halves, so each row still sees exactly the canonical sequence of FMAs. */

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"), always_inline)) static inline

AVX512 __m512 pair_ps(float a, float b)
{
    return _mm512_insertf32x8(_mm512_set1_ps(a), _mm256_set1_ps(b), 1);
}

/* A zmm accumulator's two rows (A: lanes 0-7, B: 8-15) reduced to out[0], out[1]. */
AVX512 void pair_out(__m512 acc, float *out)
{
    out[0] = hsum(_mm512_castps512_ps256(acc));
    out[1] = hsum(_mm512_extractf32x8_ps(acc, 1));
}

AVX512 __m512i load2x32(const uint8_t *a, const uint8_t *b)     /* 32 bytes of a, 32 of b */
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a)),
                              _mm256_loadu_si256((const __m256i *)b), 1);
}


/* Spreading bytes to 32-bit lanes in-lane (vpshufb), not across lanes: a "spread"
 * register holds 16 bytes of row A in 128-bit lanes 0 and 1 and 16 bytes of row B in
 * lanes 2 and 3; spread_ctl(g) picks bytes 8g..8g+7 of each row into the 16 dword lanes
 * of a pair (A's 8 then B's 8), as the low byte of each dword (zero-extended), or as the
 * top byte (top = 1: the signed byte times 2^24). */
AVX512 __m512i spread_ctl(int g, int top)
{
    const __m512i idx = _mm512_set_epi32(7, 6, 5, 4, 3, 2, 1, 0, 7, 6, 5, 4, 3, 2, 1, 0);
    __m512i i = _mm512_add_epi32(idx, _mm512_set1_epi32(8 * g));
    return top ? _mm512_or_si512(_mm512_slli_epi32(i, 24), _mm512_set1_epi32(0x808080))
               : _mm512_or_si512(i, _mm512_set1_epi32((int)0x80808000u));
}

AVX512 __m512i bcast2x16(const uint8_t *a, const uint8_t *b)     /* 16 bytes of a, 16 of b */
{
    return _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)a)), 0xFF00,
                                       _mm_loadu_si128((const __m128i *)b));
}

/* the halves of a load2x32 register (32 bytes of A, 32 of B) as two spread registers */
AVX512 __m512i spread_lo(__m512i v)
{
    return _mm512_shuffle_i64x2(v, v, _MM_SHUFFLE(2, 2, 0, 0));
}

AVX512 __m512i spread_hi(__m512i v)
{
    return _mm512_shuffle_i64x2(v, v, _MM_SHUFFLE(3, 3, 1, 1));
}

/* unsigned bytes (zero-extended) / signed bytes (sign-extended) of a spread register
 * to floats */
AVX512 __m512 spread_u8(__m512i v, __m512i ctl)
{
    return _mm512_cvtepi32_ps(_mm512_shuffle_epi8(v, ctl));
}

/* signed bytes times 2^24 (the byte as the top of its dword, exact in float) */
AVX512 __m512 spread_i8x2p24(__m512i v, __m512i ctl)
{
    return _mm512_cvtepi32_ps(_mm512_shuffle_epi8(v, ctl));
}

/* bit b of each byte of v moved to bit 4 (other bits cleared) */
AVX512 __m512i bit_to4(__m512i v, int b)
{
    __m512i t = b <= 4 ? _mm512_sll_epi16(v, _mm_cvtsi32_si128(4 - b)) : _mm512_srl_epi16(v, _mm_cvtsi32_si128(b - 4));
    return _mm512_and_si512(t, _mm512_set1_epi8(0x10));
}

/* Q4_K and Q5_K (q5 = 1) by hand: a row pair's scales stay in registers for the block
 * ([A's 8 | B's 8], lane-broadcast per unit by a permute), units 2c and 2c+1 share their
 * bytes (low and high nibbles, masked 32 at a time; Q5_K merges the fifth bits, bit u of
 * qh, at byte level too), each group of 8 is spread in-lane, and nothing is stored in
 * the loop. */
AVX512 void rows512_k45(const void *row, size_t rb, const float *x, int n, float *out, int q5)
{
    const size_t bb = q5 ? Q5_K_BYTES : Q4_K_BYTES;
    const int qoff = q5 ? 48 : 16;
    const uint8_t *b = row;
    __m512 acc[QDOT_ROWS / 2], S[QDOT_ROWS / 2], M[QDOT_ROWS / 2], xv[8];
    UNROLL(8) for (int r = 0; r < QDOT_ROWS / 2; r++) acc[r] = _mm512_setzero_ps();
    const __m512i hi8 = _mm512_set_epi32(8, 8, 8, 8, 8, 8, 8, 8, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i m4 = _mm512_set1_epi8(0xF), g0 = spread_ctl(0, 0), g1 = spread_ctl(1, 0);
    for (int k0 = 0; k0 < n; k0 += QK_K, b += bb) {
        pf_rows(b, rb, (int)bb);
        UNROLL(8) for (int r = 0; r < QDOT_ROWS / 2; r++) k45_pair_scales(b + 2 * r * rb, b + (2 * r + 1) * rb, &S[r], &M[r]);
        for (int c = 0; c < 4; c++) {
            UNROLL(8) for (int i = 0; i < 8; i++)
                xv[i] = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + k0 + 64 * c + 8 * i));
            __m512i i1 = _mm512_add_epi32(hi8, _mm512_set1_epi32(2 * c)), i2 = _mm512_add_epi32(i1, _mm512_set1_epi32(1));
            UNROLL(8) for (int r = 0; r < QDOT_ROWS / 2; r++) {
                const uint8_t *pa = b + 2 * r * rb, *pb = pa + rb, *qa = pa + qoff + 32 * c, *qb = pb + qoff + 32 * c;
                __m512 d1 = _mm512_permutexvar_ps(i1, S[r]), m1 = _mm512_permutexvar_ps(i1, M[r]);
                __m512 d2 = _mm512_permutexvar_ps(i2, S[r]), m2 = _mm512_permutexvar_ps(i2, M[r]);
                __m512i R0 = bcast2x16(qa, qb), R1 = bcast2x16(qa + 16, qb + 16);
                __m512i L0 = _mm512_and_si512(R0, m4), L1 = _mm512_and_si512(R1, m4);
                __m512i H0 = _mm512_and_si512(_mm512_srli_epi16(R0, 4), m4), H1 = _mm512_and_si512(_mm512_srli_epi16(R1, 4), m4);
                if (q5) {
                    __m512i Q0 = bcast2x16(pa + 16, pb + 16), Q1 = bcast2x16(pa + 32, pb + 32);
                    L0 = _mm512_or_si512(L0, bit_to4(Q0, 2 * c));
                    L1 = _mm512_or_si512(L1, bit_to4(Q1, 2 * c));
                    H0 = _mm512_or_si512(H0, bit_to4(Q0, 2 * c + 1));
                    H1 = _mm512_or_si512(H1, bit_to4(Q1, 2 * c + 1));
                }
                __m512 w[8];
                w[0] = _mm512_fmadd_ps(d1, spread_u8(L0, g0), m1);
                w[1] = _mm512_fmadd_ps(d1, spread_u8(L0, g1), m1);
                w[2] = _mm512_fmadd_ps(d1, spread_u8(L1, g0), m1);
                w[3] = _mm512_fmadd_ps(d1, spread_u8(L1, g1), m1);
                w[4] = _mm512_fmadd_ps(d2, spread_u8(H0, g0), m2);
                w[5] = _mm512_fmadd_ps(d2, spread_u8(H0, g1), m2);
                w[6] = _mm512_fmadd_ps(d2, spread_u8(H1, g0), m2);
                w[7] = _mm512_fmadd_ps(d2, spread_u8(H1, g1), m2);
                UNROLL(8) for (int i = 0; i < 8; i++) acc[r] = _mm512_fmadd_ps(w[i], xv[i], acc[r]);
            }
        }
    }
    UNROLL(8) for (int r = 0; r < QDOT_ROWS / 2; r++) pair_out(acc[r], out + 2 * r);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))) static void
rows512_q4_k(const void *row, size_t rb, const float *x, int n, float *out)
{
    rows512_k45(row, rb, x, n, out, 0);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))) static void
rows512_q5_k(const void *row, size_t rb, const float *x, int n, float *out)
{
    rows512_k45(row, rb, x, n, out, 1);
}

/* Q6_K by hand. Per half block (128 weights) a row pair loads its ql (2 x 32 bytes) and
 * qh (32 bytes) once for the four quarters and builds each quarter's q - 32 at byte
 * level 64 at a time, spread as (q - 32) 2^24 and multiplied by (d*sc) 2^-24: the same
 * real product as (d*sc) (q - 32), so the same rounding (|it| >= 2^-48 or 0: never
 * subnormal); x of the half is broadcast once for all pairs, and each row's 16
 * scales (d * sc) stay in a zmm register for the block (two-source permutes pick a
 * unit's pair of scales for rows A and B). Pairs go one after another through a half:
 * their FMA chains overlap in the out-of-order window. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))) static void
rows512_q6_k(const void *row, size_t rb, const float *x, int n, float *out)
{
    const uint8_t *b = row;
    __m512 acc[QDOT_ROWS / 2], S[QDOT_ROWS], xv[16];
    UNROLL(8) for (int r = 0; r < QDOT_ROWS / 2; r++) acc[r] = _mm512_setzero_ps();
    const __m512i hi16 = _mm512_set_epi32(16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i m4 = _mm512_set1_epi8(0xF), m2 = _mm512_set1_epi8(0x30), c32 = _mm512_set1_epi8(32);
    const __m512i g0 = spread_ctl(0, 1), g1 = spread_ctl(1, 1);
    for (int k0 = 0; k0 < n; k0 += QK_K, b += Q6_K_BYTES) {
        pf_rows(b, rb, Q6_K_BYTES);
        UNROLL(8) for (int r = 0; r < QDOT_ROWS; r++) {
            const uint8_t *br = b + r * rb;
            /* (d*sc) 2^-24: exact (|d*sc| >= 2^-24 or 0, so no underflow) */
            S[r] = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(h2f(br + 208)),
                                               _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(br + 192))))),
                                 _mm512_set1_ps(0x1p-24f));
        }
        for (int h = 0; h < 2; h++) {
            UNROLL(16) for (int i = 0; i < 16; i++)
                xv[i] = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + k0 + 128 * h + 8 * i));
            UNROLL(8) for (int r = 0; r < QDOT_ROWS / 2; r++) {
                const uint8_t *a = b + 2 * r * rb, *c = a + rb;
                __m512i L0 = load2x32(a + 64 * h, c + 64 * h), L1 = load2x32(a + 64 * h + 32, c + 64 * h + 32);
                __m512i H = load2x32(a + 128 + 32 * h, c + 128 + 32 * h);
                /* q of quarter t: low nibble of L0/L1 (t = 0, 1) or high (2, 3); bits 2t of H as bits 4-5 */
                __m512i q[4];
                q[0] = _mm512_or_si512(_mm512_and_si512(L0, m4), _mm512_and_si512(_mm512_slli_epi16(H, 4), m2));
                q[1] = _mm512_or_si512(_mm512_and_si512(L1, m4), _mm512_and_si512(_mm512_slli_epi16(H, 2), m2));
                q[2] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(L0, 4), m4), _mm512_and_si512(H, m2));
                q[3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(L1, 4), m4),
                                       _mm512_and_si512(_mm512_srli_epi16(H, 2), m2));
                UNROLL(4) for (int t = 0; t < 4; t++) {
                    int u = 4 * h + t;
                    __m512i qs = _mm512_sub_epi8(q[t], c32), lo = spread_lo(qs), hi = spread_hi(qs);
                    __m512i i0 = _mm512_add_epi32(hi16, _mm512_set1_epi32(2 * u)), i1 = _mm512_add_epi32(i0, _mm512_set1_epi32(1));
                    __m512 s0 = _mm512_permutex2var_ps(S[2 * r], i0, S[2 * r + 1]);
                    __m512 s1 = _mm512_permutex2var_ps(S[2 * r], i1, S[2 * r + 1]);
                    acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(s0, spread_i8x2p24(lo, g0)), xv[4 * t], acc[r]);
                    acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(s0, spread_i8x2p24(lo, g1)), xv[4 * t + 1], acc[r]);
                    acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(s1, spread_i8x2p24(hi, g0)), xv[4 * t + 2], acc[r]);
                    acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(s1, spread_i8x2p24(hi, g1)), xv[4 * t + 3], acc[r]);
                }
            }
        }
    }
    UNROLL(8) for (int r = 0; r < QDOT_ROWS / 2; r++) pair_out(acc[r], out + 2 * r);
}

/* Q8_0 on AMD's CPUs (rows512_q8_0_any): rows are not paired here; 16 weights of one
 * row are widened and scaled in a zmm, then its two halves go to that row's 8-lane chain
 * one after the other (AVX-512VL gives the 8 ymm accumulators room). */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))) static void
rows512_q8_0y(const void *row, size_t rb, const float *x, int n, float *out)
{
    const uint8_t *b = row;
    __m256 acc[QDOT_ROWS], xv[4];
    UNROLL(8) for (int r = 0; r < QDOT_ROWS; r++) acc[r] = _mm256_setzero_ps();
    for (int k0 = 0; k0 < n; k0 += QK8_0, b += Q8_0_BYTES) {
        pf_rows(b, rb, Q8_0_BYTES);
        UNROLL(4) for (int i = 0; i < 4; i++) xv[i] = _mm256_loadu_ps(x + k0 + 8 * i);
        UNROLL(8) for (int r = 0; r < QDOT_ROWS; r++) {
            const uint8_t *br = b + r * rb;
            __m512 d = _mm512_set1_ps(h2f(br));
            UNROLL(2) for (int i = 0; i < 2; i++) {
                __m512 w = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                             _mm_loadu_si128((const __m128i *)(br + 2 + 16 * i)))), d);
                acc[r] = _mm256_fmadd_ps(_mm512_castps512_ps256(w), xv[2 * i], acc[r]);
                acc[r] = _mm256_fmadd_ps(_mm512_extractf32x8_ps(w, 1), xv[2 * i + 1], acc[r]);
            }
        }
    }
    UNROLL(8) for (int r = 0; r < QDOT_ROWS; r++) out[r] = hsum(acc[r]);
}

/* Q8_0 with rows in zmm halves: each unit's q of rows A and B are spread in-lane as
 * q 2^24 (bcast2x16, spread_i8x2p24, as in Q6_K) and multiplied by d 2^-24 (exact: d is
 * an f16, so d 2^-24 >= 2^-48 is a normal float): the same real product as q * d, so the
 * same bits. Fewer vector operations per weight than rows512_q8_0y (no ymm FMAs, which
 * Intel's cores run on one port while zmm code is in flight): on a 2-vCPU Intel Xeon
 * (AVX-512, docs/QUANT.md) 10.2-11.8 Gweights/s in L2 against 7.6-8.1. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))) static void
rows512_q8_0(const void *row, size_t rb, const float *x, int n, float *out)
{
    const uint8_t *b = row;
    __m512 acc[QDOT_ROWS / 2], xv[4];
    UNROLL(8) for (int r = 0; r < QDOT_ROWS / 2; r++) acc[r] = _mm512_setzero_ps();
    const __m512i g0 = spread_ctl(0, 1), g1 = spread_ctl(1, 1);
    const __m512 p24 = _mm512_set1_ps(0x1p-24f);
    for (int k0 = 0; k0 < n; k0 += QK8_0, b += Q8_0_BYTES) {
        pf_rows(b, rb, Q8_0_BYTES);
        UNROLL(4) for (int i = 0; i < 4; i++) xv[i] = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + k0 + 8 * i));
        UNROLL(4) for (int r = 0; r < QDOT_ROWS / 2; r++) {
            const uint8_t *pa = b + 2 * r * rb, *pb = pa + rb;
            short ha, hb;
            memcpy(&ha, pa, 2);
            memcpy(&hb, pb, 2);
            __m512 d = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_mask_set1_epi16(_mm256_set1_epi16(ha), 0xFF00, hb)), p24);
            __m512i lo = bcast2x16(pa + 2, pb + 2), hi = bcast2x16(pa + 18, pb + 18);
            acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(d, spread_i8x2p24(lo, g0)), xv[0], acc[r]);
            acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(d, spread_i8x2p24(lo, g1)), xv[1], acc[r]);
            acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(d, spread_i8x2p24(hi, g0)), xv[2], acc[r]);
            acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(d, spread_i8x2p24(hi, g1)), xv[3], acc[r]);
        }
    }
    UNROLL(8) for (int r = 0; r < QDOT_ROWS / 2; r++) pair_out(acc[r], out + 2 * r);
}

/* Which of the two: the paired kernel, except on AMD's CPUs, where rows512_q8_0y was
 * measured (Zen 5: 27.3-27.9 Gweights/s in L2) and the paired one was not;
 * PHI3_Q8_0_KERNEL=ymm or =paired chooses (benchmarks), and so does qdot_q8_0_kernel
 * (tests). Both give the same bits. */
static int q8_paired = -1;

int qdot_q8_0_kernel(int paired)
{
    if (paired >= 0) q8_paired = paired > 0;
    else {
        const char *e = getenv("PHI3_Q8_0_KERNEL");
        __builtin_cpu_init();
        q8_paired = e && !strcmp(e, "ymm") ? 0 : e && !strcmp(e, "paired") ? 1 : !__builtin_cpu_is("amd");
    }
    return q8_paired;
}

static void rows512_q8_0_any(const void *row, size_t rb, const float *x, int n, float *out)
{
    if (q8_paired < 0) qdot_q8_0_kernel(-1);
    if (q8_paired) rows512_q8_0(row, rb, x, n, out);
    else rows512_q8_0y(row, rb, x, n, out);
}

/* Q4_0: rows A and B widened 8 bytes at a time (pair_q), w = fma(q, d, -8 d). That is
 * ggml's (q - 8) d, but +0 where ggml has -0 (q = 8, d < 0); no dot sees the
 * difference: an accumulator that starts at +0 never becomes -0 (x + -0 = x, +0 + -0 =
 * +0), so fma(+-0, x, acc) gives the same bits either way. (The panel conversion,
 * which stores weights, uses the exact-sign units.) */
AVX512 __m128i pair_q(const uint8_t *a, const uint8_t *b)     /* 8 bytes of a, 8 of b */
{
    return _mm_castpd_si128(_mm_loadh_pd(_mm_castsi128_pd(_mm_loadl_epi64((const __m128i *)a)), (const double *)b));
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))) static void
rows512_q4_0(const void *row, size_t rb, const float *x, int n, float *out)
{
    const uint8_t *b = row;
    __m512 acc[QDOT_ROWS / 2], xv[4];
    UNROLL(8) for (int r = 0; r < QDOT_ROWS / 2; r++) acc[r] = _mm512_setzero_ps();
    const __m512i m = _mm512_set1_epi32(0xF);
    bscale p[QDOT_ROWS];
    for (int k0 = 0; k0 < n; k0 += QK4_0, b += Q4_0_BYTES) {
        pf_rows(b, rb, Q4_0_BYTES);
        UNROLL(8) for (int r = 0; r < QDOT_ROWS; r++) prep_q4_0(b + r * rb, &p[r]);
        UNROLL(4) for (int i = 0; i < 4; i++) xv[i] = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + k0 + 8 * i));
        UNROLL(8) for (int r = 0; r < QDOT_ROWS / 2; r++) {
            const uint8_t *pa = b + 2 * r * rb, *pb = pa + rb;
            __m512 d = pair_ps(p[2 * r].s[0], p[2 * r + 1].s[0]), c = _mm512_mul_ps(d, _mm512_set1_ps(-8.0f)), w[4];
            __m512i v0 = _mm512_cvtepu8_epi32(pair_q(pa + 2, pb + 2)), v1 = _mm512_cvtepu8_epi32(pair_q(pa + 10, pb + 10));
            w[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v0, m)), d, c);
            w[1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v1, m)), d, c);
            w[2] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v0, 4)), d, c);
            w[3] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v1, 4)), d, c);
            UNROLL(4) for (int i = 0; i < 4; i++) acc[r] = _mm512_fmadd_ps(w[i], xv[i], acc[r]);
        }
    }
    UNROLL(8) for (int r = 0; r < QDOT_ROWS / 2; r++) pair_out(acc[r], out + 2 * r);
}

/* ---- dispatch ---- */

typedef float (*dot_t)(const void *, const float *, int);
typedef void (*rows_t)(const void *, size_t, int, const float *, int, float *);
typedef void (*toks_t)(const void *, const float *, size_t, int, int, float *);
typedef void (*rows512_t)(const void *, size_t, const float *, int, float *);
static const struct { dot_t dot; rows_t rows; toks_t toks; rows512_t rows512; } kern[ST_NDTYPE] = {
    [ST_Q8_0] = {dot_q8_0, rows_q8_0, toks_q8_0, rows512_q8_0_any},
    [ST_Q4_0] = {dot_q4_0, rows_q4_0, toks_q4_0, rows512_q4_0},
    [ST_Q4_K] = {dot_q4_k, rows_q4_k, toks_q4_k, rows512_q4_k},
    [ST_Q5_K] = {dot_q5_k, rows_q5_k, toks_q5_k, rows512_q5_k},
    [ST_Q6_K] = {dot_q6_k, rows_q6_k, toks_q6_k, rows512_q6_k},
};

float qdot(st_dtype d, const void *row, const float *x, int n)
{
    if (qdot_avx() && d < ST_NDTYPE && kern[d].dot) return kern[d].dot(row, x, n);
    return qdot_portable(d, row, x, n);
}

void qdot_rows(st_dtype d, const void *row, size_t row_bytes, int nrows, const float *x, int n,
               float *out)
{
    if (qdot_level() >= 2 && nrows == QDOT_ROWS && d < ST_NDTYPE && kern[d].rows512) {
        kern[d].rows512(row, row_bytes, x, n, out);
        return;
    }
    if (qdot_avx() && d < ST_NDTYPE && kern[d].rows) {
        kern[d].rows(row, row_bytes, nrows, x, n, out);
        return;
    }
    for (int r = 0; r < nrows; r++) out[r] = qdot_portable(d, (const uint8_t *)row + r * row_bytes, x, n);
}

void qdot_tokens(st_dtype d, const void *row, const float *x, size_t ldx, int ntok, int n, float *out)
{
    if (qdot_avx() && d < ST_NDTYPE && kern[d].toks) {
        kern[d].toks(row, x, ldx, ntok, n, out);
        return;
    }
    for (int t = 0; t < ntok; t++) out[t] = qdot_portable(d, row, x + t * ldx, n);
}

/* ---- AVX-512 units for the panel conversion: 32 weights of one row as two zmm ----
 * The same float operations as the AVX2 units, 16 lanes at a time. */

AVX512 void unit512_q8_0(const uint8_t *b, int u, const bscale *p, __m512 *w)
{
    (void)u;
    __m512 d = _mm512_set1_ps(p->s[0]);
    UNROLL(2) for (int i = 0; i < 2; i++)
        w[i] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 2 + 16 * i)))), d);
}

AVX512 void unit512_q4_0(const uint8_t *b, int u, const bscale *p, __m512 *w)
{
    (void)u;
    __m512 d = _mm512_set1_ps(p->s[0]);
    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b + 2))), c8 = _mm512_set1_epi32(8);
    w[0] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(v, _mm512_set1_epi32(0xF)), c8)), d);
    w[1] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(v, 4), c8)), d);
}

AVX512 void unit512_q4_k(const uint8_t *b, int u, const bscale *p, __m512 *w)
{
    __m512 d1 = _mm512_set1_ps(p->s[u]), m1 = _mm512_set1_ps(p->m[u]);
    const uint8_t *qs = b + 16 + 32 * (u >> 1);
    UNROLL(2) for (int i = 0; i < 2; i++) {
        __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(qs + 16 * i)));
        v = u & 1 ? _mm512_srli_epi32(v, 4) : _mm512_and_si512(v, _mm512_set1_epi32(0xF));
        w[i] = _mm512_fmadd_ps(d1, _mm512_cvtepi32_ps(v), m1);
    }
}

AVX512 void unit512_q5_k(const uint8_t *b, int u, const bscale *p, __m512 *w)
{
    __m512 d1 = _mm512_set1_ps(p->s[u]), m1 = _mm512_set1_ps(p->m[u]);
    __m256i v = q5_bytes(b, u);
    w[0] = _mm512_fmadd_ps(d1, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(v))), m1);
    w[1] = _mm512_fmadd_ps(d1, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(v, 1))), m1);
}

AVX512 void unit512_q6_k(const uint8_t *b, int u, const bscale *p, __m512 *w)
{
    __m256i q = q6_bytes(b, u);
    w[0] = _mm512_mul_ps(_mm512_set1_ps(p->s[2 * u]), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q))));
    w[1] = _mm512_mul_ps(_mm512_set1_ps(p->s[2 * u + 1]),
                         _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1))));
}

/* ---- gemm_ops for the blocked many-token path (decode/gemm.h) ----
 * cvt dequantizes a block-aligned range exactly (the AVX units above or quant.c), so
 * the GEMM tiles run the canonical order on the same float weights. */

/* A cvt of decode/gemm.h for type T: UNIT dequantizes unit u (32 weights) into NV vectors
 * of type V; PUT(dst, o, v) stores the vector of weights o.. (a row, or a panel row) */
#define CVT(NAME, TGT, T, BS, BB, UNIT, V, NV, PUT)                                             \
    __attribute__((target(TGT))) static void NAME(const void *w, int k0, int n, float *dst)     \
    {                                                                                           \
        const uint8_t *b = (const uint8_t *)w + (size_t)(k0 / BS) * BB;                         \
        bscale p;                                                                               \
        V v[NV];                                                                                \
        for (int k = 0; k < n; k += BS, b += BB) {                                              \
            prep_##T(b, &p);                                                                    \
            for (int u = 0; u < BS / 32 && k + 32 * u < n; u++) {                               \
                UNIT(b, u, &p, v);                                                              \
                UNROLL(4) for (int i = 0; i < NV; i++) PUT(dst, k + 32 * u + 32 / NV * i, v[i]); \
            }                                                                                   \
        }                                                                                       \
    }
#define PUT_ROW256(d, o, v) _mm256_storeu_ps((d) + (o), v)
#define PUT_ROW512(d, o, v) _mm512_storeu_ps((d) + (o), v)
/* gemm_ops.panel: weights o..o+16 as the panel's steps o/8 and o/8 + 1, 32 floats apart */
#define PUT_PANEL512(d, o, v)                                                                   \
    (_mm256_storeu_ps((d) + (o) / 8 * 32, _mm512_castps512_ps256(v)),                           \
     _mm256_storeu_ps((d) + (o) / 8 * 32 + 32, _mm512_extractf32x8_ps(v, 1)))

#define T512 "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"
#define GEMM_GLUE(T, DT, BS, BB)                                                                \
    static float gdot_##T##_c(const void *w, const float *x, int n) { return qdot_portable(DT, w, x, n); } \
    static void gdot4_##T##_c(const void *w, size_t rb, const float *x, int n, float *out)     \
    {                                                                                           \
        for (int i = 0; i < 4; i++) out[i] = qdot_portable(DT, (const uint8_t *)w + i * rb, x, n); \
    }                                                                                           \
    static void cvt_##T##_c(const void *w, int k0, int n, float *dst) { quant_dequant_row(DT, w, dst, k0, n); } \
    static void gdot4_##T(const void *w, size_t rb, const float *x, int n, float *out)         \
    {                                                                                           \
        for (int i = 0; i < 4; i++) out[i] = dot_##T((const uint8_t *)w + i * rb, x, n);       \
    }                                                                                           \
    CVT(cvt_##T, "avx2,fma,f16c", T, BS, BB, unit_##T, __m256, 4, PUT_ROW256)                  \
    CVT(cvt512_##T, T512, T, BS, BB, unit512_##T, __m512, 2, PUT_ROW512)                       \
    CVT(panel512_##T, T512, T, BS, BB, unit512_##T, __m512, 2, PUT_PANEL512)
GEMM_GLUE(q8_0, ST_Q8_0, QK8_0, Q8_0_BYTES)
GEMM_GLUE(q4_0, ST_Q4_0, QK4_0, Q4_0_BYTES)
GEMM_GLUE(q4_k, ST_Q4_K, QK_K, Q4_K_BYTES)
GEMM_GLUE(q5_k, ST_Q5_K, QK_K, Q5_K_BYTES)
GEMM_GLUE(q6_k, ST_Q6_K, QK_K, Q6_K_BYTES)

#define OPS(T, B, BB) {dot_##T, gdot4_##T, cvt_##T, 1, B, BB, NULL}
#define OPS512(T, B, BB) {dot_##T, gdot4_##T, cvt512_##T, 2, B, BB, panel512_##T}
#define OPS_C(T, B, BB) {gdot_##T##_c, gdot4_##T##_c, cvt_##T##_c, 0, B, BB, NULL}
#define OPS_ALL(M) {M(q8_0, QK8_0, Q8_0_BYTES), M(q4_0, QK4_0, Q4_0_BYTES), M(q4_k, QK_K, Q4_K_BYTES), \
                    M(q5_k, QK_K, Q5_K_BYTES), M(q6_k, QK_K, Q6_K_BYTES)}
static const gemm_ops gops[3][5] = {
    OPS_ALL(OPS_C),
    OPS_ALL(OPS),
    OPS_ALL(OPS512),
};

const gemm_ops *qdot_gemm_ops(st_dtype d)
{
    if (!quant_is_block(d)) return NULL;
    int lv = qdot_level() < gemm_vec_level() ? qdot_level() : gemm_vec_level();
    return &gops[lv][d - ST_Q8_0];
}
