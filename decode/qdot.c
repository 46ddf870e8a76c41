/* qdot.c: dot products of quantized weight rows with float32 activations (qdot.h):
 * the portable path (dequantize a block, fmaf lanes) and AVX2/FMA kernels that
 * dequantize 32 weights at a time into four ymm registers with the same float
 * operations as embed/quant.c and feed them straight to the FMAs.
 *
 * Every kernel walks a row in "units" of 32 weights (a Q8_0/Q4_0 block, a K-quant
 * sub-block of 32); weights k..k+8 of the row always go to the 8 lanes of one
 * accumulator, in increasing k, so all variants share one operation order. */
#include "decode/qdot.h"
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

int qdot_avx(void)
{
    static int avx = -1;
    if (avx < 0) {
        unsigned ea, eb, ec, ed;
        __builtin_cpu_init();
        avx = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
              __get_cpuid(1, &ea, &eb, &ec, &ed) && (ec & bit_F16C) && !getenv("PHI3_NO_AVX");
    }
    return avx;
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

/* ---- AVX2: 32 weights (unit u of a block) into w[0..4) ---- */

#define AVX __attribute__((target("avx2,fma,f16c"), always_inline)) static inline

AVX __m256 h2f(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _mm256_set1_ps(_cvtsh_ss(h));
}

AVX __m256 cvt_u8(__m128i v)     /* low 8 bytes (unsigned) -> 8 floats */
{
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
}

AVX __m256 cvt_i8(__m128i v)     /* low 8 bytes (signed) -> 8 floats */
{
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
}

AVX void unit_q8_0(const uint8_t *b, int u, __m256 *w)
{
    (void)u;
    __m256 d = h2f(b);
    const uint8_t *q = b + 2;
    for (int i = 0; i < 4; i++)
        w[i] = _mm256_mul_ps(cvt_i8(_mm_loadl_epi64((const __m128i *)(q + 8 * i))), d);
}

AVX void unit_q4_0(const uint8_t *b, int u, __m256 *w)
{
    (void)u;
    __m256 d = h2f(b);
    __m128i v = _mm_loadu_si128((const __m128i *)(b + 2)), m = _mm_set1_epi8(0xF), e = _mm_set1_epi8(8);
    __m128i lo = _mm_sub_epi8(_mm_and_si128(v, m), e);
    __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), m), e);
    w[0] = _mm256_mul_ps(cvt_i8(lo), d);
    w[1] = _mm256_mul_ps(cvt_i8(_mm_srli_si128(lo, 8)), d);
    w[2] = _mm256_mul_ps(cvt_i8(hi), d);
    w[3] = _mm256_mul_ps(cvt_i8(_mm_srli_si128(hi, 8)), d);
}

AVX void k_sm(const uint8_t *s, int j, int *sc, int *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Q4_K (qh NULL) / Q5_K sub-block u: nibbles of qs[32(u/2)..], low for even u, high for
 * odd; the Q5_K fifth bit is bit u of qh[l]; w = (d*sc) * q - (dmin*m). */
AVX void unit_k45(const uint8_t *b, const uint8_t *qh, const uint8_t *qs, int u, __m256 *w)
{
    int sc, m;
    k_sm(b + 4, u, &sc, &m);
    uint16_t dh, mh;
    memcpy(&dh, b, 2);
    memcpy(&mh, b + 2, 2);
    __m256 d1 = _mm256_set1_ps(_cvtsh_ss(dh) * (float)sc), m1 = _mm256_set1_ps(_cvtsh_ss(mh) * (float)m);
    __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * (u >> 1)));
    if (u & 1) v = _mm256_srli_epi16(v, 4);
    v = _mm256_and_si256(v, _mm256_set1_epi8(0xF));
    if (qh) {
        __m256i bit = _mm256_set1_epi8((char)(1 << u));
        __m256i h = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)qh), bit), bit);
        v = _mm256_or_si256(v, _mm256_and_si256(h, _mm256_set1_epi8(16)));
    }
    __m128i a = _mm256_castsi256_si128(v), c = _mm256_extracti128_si256(v, 1);
    w[0] = _mm256_sub_ps(_mm256_mul_ps(d1, cvt_u8(a)), m1);
    w[1] = _mm256_sub_ps(_mm256_mul_ps(d1, cvt_u8(_mm_srli_si128(a, 8))), m1);
    w[2] = _mm256_sub_ps(_mm256_mul_ps(d1, cvt_u8(c)), m1);
    w[3] = _mm256_sub_ps(_mm256_mul_ps(d1, cvt_u8(_mm_srli_si128(c, 8))), m1);
}

AVX void unit_q4_k(const uint8_t *b, int u, __m256 *w)
{
    unit_k45(b, NULL, b + 16, u, w);
}

AVX void unit_q5_k(const uint8_t *b, int u, __m256 *w)
{
    unit_k45(b, b + 16, b + 48, u, w);
}

/* Q6_K unit u = 4h + quarter: elements 32 quarter.. of half h; low 4 bits from
 * ql[64h + 32 (quarter & 1) + l] (high nibble for quarter >= 2), 2 high bits at bit
 * 2 quarter of qh[32h + l]; scales sc[8h + 2 quarter] then sc[8h + 2 quarter + 1];
 * w = (d * sc) * (q - 32). */
AVX void unit_q6_k(const uint8_t *b, int u, __m256 *w)
{
    int h = u >> 2, qt = u & 3;
    uint16_t dh;
    memcpy(&dh, b + 208, 2);
    float d = _cvtsh_ss(dh);
    const int8_t *sc = (const int8_t *)(b + 192) + 8 * h + 2 * qt;
    __m256 s0 = _mm256_set1_ps(d * (float)sc[0]), s1 = _mm256_set1_ps(d * (float)sc[1]);
    __m256i lo = _mm256_loadu_si256((const __m256i *)(b + 64 * h + 32 * (qt & 1)));
    if (qt >= 2) lo = _mm256_srli_epi16(lo, 4);
    lo = _mm256_and_si256(lo, _mm256_set1_epi8(0xF));
    __m256i hb = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h));
    hb = _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * qt)), _mm256_set1_epi8(3));
    __m256i q = _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hb, 4)), _mm256_set1_epi8(32));
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

/* The three kernel shapes for one type T with BS weights / BB bytes per block. */
#define GEN(T, BS, BB)                                                                          \
    __attribute__((target("avx2,fma,f16c"))) static float dot_##T(const void *row, const float *x, int n) \
    {                                                                                           \
        const uint8_t *b = row;                                                                 \
        __m256 acc = _mm256_setzero_ps(), w[4];                                                 \
        for (int k = 0; k < n; k += 32) {                                                       \
            unit_##T(b + (size_t)(k / BS) * BB, (k % BS) / 32, w);                              \
            for (int i = 0; i < 4; i++) acc = _mm256_fmadd_ps(w[i], _mm256_loadu_ps(x + k + 8 * i), acc); \
        }                                                                                       \
        return hsum(acc);                                                                       \
    }                                                                                           \
    __attribute__((target("avx2,fma,f16c"))) static void rows_##T(const void *row, size_t rb, int nr, \
                                                                 const float *x, int n, float *out) \
    {                                                                                           \
        const uint8_t *b0 = row, *b1 = b0 + rb, *b2 = b1 + rb, *b3 = b2 + rb;                   \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, w[4], xv[4];                 \
        if (nr < 4) {                                                                           \
            for (int r = 0; r < nr; r++) out[r] = dot_##T(b0 + r * rb, x, n);                   \
            return;                                                                             \
        }                                                                                       \
        for (int k = 0; k < n; k += 32) {                                                       \
            size_t o = (size_t)(k / BS) * BB;                                                   \
            int u = (k % BS) / 32;                                                              \
            for (int i = 0; i < 4; i++) xv[i] = _mm256_loadu_ps(x + k + 8 * i);                 \
            unit_##T(b0 + o, u, w);                                                             \
            for (int i = 0; i < 4; i++) a0 = _mm256_fmadd_ps(w[i], xv[i], a0);                 \
            unit_##T(b1 + o, u, w);                                                             \
            for (int i = 0; i < 4; i++) a1 = _mm256_fmadd_ps(w[i], xv[i], a1);                 \
            unit_##T(b2 + o, u, w);                                                             \
            for (int i = 0; i < 4; i++) a2 = _mm256_fmadd_ps(w[i], xv[i], a2);                 \
            unit_##T(b3 + o, u, w);                                                             \
            for (int i = 0; i < 4; i++) a3 = _mm256_fmadd_ps(w[i], xv[i], a3);                 \
        }                                                                                       \
        out[0] = hsum(a0);                                                                      \
        out[1] = hsum(a1);                                                                      \
        out[2] = hsum(a2);                                                                      \
        out[3] = hsum(a3);                                                                      \
    }                                                                                           \
    __attribute__((target("avx2,fma,f16c"))) static void toks_##T(const void *row, const float *x, \
                                                                 size_t ldx, int nt, int n, float *out) \
    {                                                                                           \
        const uint8_t *b = row;                                                                 \
        const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx, *x3 = x + 3 * ldx;               \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, w[4];                       \
        if (nt < 4) {                                                                           \
            for (int t = 0; t < nt; t++) out[t] = dot_##T(row, x + t * ldx, n);                 \
            return;                                                                             \
        }                                                                                       \
        for (int k = 0; k < n; k += 32) {                                                       \
            unit_##T(b + (size_t)(k / BS) * BB, (k % BS) / 32, w);                              \
            for (int i = 0; i < 4; i++) {                                                       \
                a0 = _mm256_fmadd_ps(w[i], _mm256_loadu_ps(x0 + k + 8 * i), a0);               \
                a1 = _mm256_fmadd_ps(w[i], _mm256_loadu_ps(x1 + k + 8 * i), a1);               \
                a2 = _mm256_fmadd_ps(w[i], _mm256_loadu_ps(x2 + k + 8 * i), a2);               \
                a3 = _mm256_fmadd_ps(w[i], _mm256_loadu_ps(x3 + k + 8 * i), a3);               \
            }                                                                                   \
        }                                                                                       \
        out[0] = hsum(a0);                                                                      \
        out[1] = hsum(a1);                                                                      \
        out[2] = hsum(a2);                                                                      \
        out[3] = hsum(a3);                                                                      \
    }

GEN(q8_0, QK8_0, Q8_0_BYTES)
GEN(q4_0, QK4_0, Q4_0_BYTES)
GEN(q4_k, QK_K, Q4_K_BYTES)
GEN(q5_k, QK_K, Q5_K_BYTES)
GEN(q6_k, QK_K, Q6_K_BYTES)

/* ---- dispatch ---- */

typedef float (*dot_t)(const void *, const float *, int);
typedef void (*rows_t)(const void *, size_t, int, const float *, int, float *);
typedef void (*toks_t)(const void *, const float *, size_t, int, int, float *);
static const struct { dot_t dot; rows_t rows; toks_t toks; } kern[ST_NDTYPE] = {
    [ST_Q8_0] = {dot_q8_0, rows_q8_0, toks_q8_0}, [ST_Q4_0] = {dot_q4_0, rows_q4_0, toks_q4_0},
    [ST_Q4_K] = {dot_q4_k, rows_q4_k, toks_q4_k}, [ST_Q5_K] = {dot_q5_k, rows_q5_k, toks_q5_k},
    [ST_Q6_K] = {dot_q6_k, rows_q6_k, toks_q6_k},
};

float qdot(st_dtype d, const void *row, const float *x, int n)
{
    if (qdot_avx() && d < ST_NDTYPE && kern[d].dot) return kern[d].dot(row, x, n);
    return qdot_portable(d, row, x, n);
}

void qdot_rows(st_dtype d, const void *row, size_t row_bytes, int nrows, const float *x, int n,
               float *out)
{
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
