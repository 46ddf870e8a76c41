/* gemm.c: the CPU backend's weight-row . activation products in the canonical order of
 * gemm.h, for one to 64 tokens (register tiles of rows x tokens, weights converted in
 * registers, 8-lane accumulators held across the whole row; dot4, 4 rows of one token,
 * for attention and other dtypes) and for frames of many tokens (blocked: a row
 * block's weights converted to float32 panels once per GEMM_KC columns, then register
 * tiles of rows x tokens; 8-lane partial sums kept per output across panels, so the order
 * along k is exactly the one-token order).
 *
 * The AVX-512 tile computes two outputs per zmm register (lanes 0-7 one row, 8-15 the
 * next): each half is the same 8-lane accumulator with the same FMA sequence as the AVX2
 * and scalar paths, so all three give the same bits. */
#include "decode/gemm.h"
#include "decode/simd.h"
#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512dq,avx512bw,avx512vl")))

static inline float reduce8(const float *l)
{
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

static inline float ld_bf16(const void *w, size_t i)
{
    uint32_t u = (uint32_t)((const uint16_t *)w)[i] << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline float ld_f16(const void *w, size_t i) { return f16_to_f32(((const uint16_t *)w)[i]); }
static inline float ld_f32(const void *w, size_t i) { return ((const float *)w)[i]; }

/* ---- scalar (PHI3_NO_AVX=1, or no AVX2/FMA/F16C): fmaf, same lanes ---- */

#define SCALAR_KERNELS(T, LOAD)                                                        \
    static float dot_##T##_c(const void *w, const float *x, int n)                     \
    {                                                                                  \
        float a[8] = {0};                                                              \
        int k = 0;                                                                     \
        for (; k + 8 <= n; k += 8)                                                     \
            for (int j = 0; j < 8; j++) a[j] = fmaf(LOAD(w, k + j), x[k + j], a[j]);   \
        float r = reduce8(a);                                                          \
        for (; k < n; k++) r = fmaf(LOAD(w, k), x[k], r);                              \
        return r;                                                                      \
    }                                                                                  \
    static void dot4_##T##_c(const void *w, size_t rb, const float *x, int n, float *out) \
    {                                                                                  \
        for (int i = 0; i < 4; i++) out[i] = dot_##T##_c((const uint8_t *)w + i * rb, x, n); \
    }                                                                                  \
    static void cvt_##T##_c(const void *w, int k0, int n, float *d)                    \
    {                                                                                  \
        for (int i = 0; i < n; i++) d[i] = LOAD(w, (size_t)k0 + i);                    \
    }
SCALAR_KERNELS(bf16, ld_bf16)
SCALAR_KERNELS(f16, ld_f16)
SCALAR_KERNELS(f32, ld_f32)

/* ---- AVX2: 8 weights at a time as float32 ---- */

#define CVT_bf16(w, i) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32( \
    _mm_loadu_si128((const __m128i *)((const uint16_t *)(w) + (i)))), 16))
#define CVT_f16(w, i) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)(w) + (i))))
#define CVT_f32(w, i) _mm256_loadu_ps((const float *)(w) + (i))

AVX2 static float hsum8(__m256 a)
{
    float s[8];
    _mm256_storeu_ps(s, a);
    return reduce8(s);
}

#define AVX_KERNELS(T, LOAD)                                                           \
    AVX2 static float dot_##T##_avx(const void *w, const float *x, int n)              \
    {                                                                                  \
        __m256 a = _mm256_setzero_ps();                                                \
        int k = 0;                                                                     \
        for (; k + 8 <= n; k += 8) a = _mm256_fmadd_ps(CVT_##T(w, k), _mm256_loadu_ps(x + k), a); \
        float r = hsum8(a);                                                            \
        for (; k < n; k++) r = fmaf(LOAD(w, k), x[k], r);                              \
        return r;                                                                      \
    }                                                                                  \
    AVX2 static void dot4_##T##_avx(const void *w, size_t rb, const float *x, int n, float *out) \
    {                                                                                  \
        const uint8_t *w0 = w, *w1 = w0 + rb, *w2 = w1 + rb, *w3 = w2 + rb;            \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                    \
        int k = 0;                                                                     \
        /* 32 columns of one row, then the next: each row's chain is in order, and the  \
         * four rows are read in 64-byte runs with a prefetch well ahead */            \
        for (; k + 32 <= n; k += 32) {                                                 \
            if (k + PF_AHEAD < n) {                                                    \
                _mm_prefetch((const char *)(w0 + (k + PF_AHEAD) * sizeof(T##_t)), _MM_HINT_T0); \
                _mm_prefetch((const char *)(w1 + (k + PF_AHEAD) * sizeof(T##_t)), _MM_HINT_T0); \
                _mm_prefetch((const char *)(w2 + (k + PF_AHEAD) * sizeof(T##_t)), _MM_HINT_T0); \
                _mm_prefetch((const char *)(w3 + (k + PF_AHEAD) * sizeof(T##_t)), _MM_HINT_T0); \
            }                                                                          \
            __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);      \
            __m256 x2 = _mm256_loadu_ps(x + k + 16), x3 = _mm256_loadu_ps(x + k + 24); \
            a0 = _mm256_fmadd_ps(CVT_##T(w0, k), x0, a0);                              \
            a0 = _mm256_fmadd_ps(CVT_##T(w0, k + 8), x1, a0);                          \
            a0 = _mm256_fmadd_ps(CVT_##T(w0, k + 16), x2, a0);                         \
            a0 = _mm256_fmadd_ps(CVT_##T(w0, k + 24), x3, a0);                         \
            a1 = _mm256_fmadd_ps(CVT_##T(w1, k), x0, a1);                              \
            a1 = _mm256_fmadd_ps(CVT_##T(w1, k + 8), x1, a1);                          \
            a1 = _mm256_fmadd_ps(CVT_##T(w1, k + 16), x2, a1);                         \
            a1 = _mm256_fmadd_ps(CVT_##T(w1, k + 24), x3, a1);                         \
            a2 = _mm256_fmadd_ps(CVT_##T(w2, k), x0, a2);                              \
            a2 = _mm256_fmadd_ps(CVT_##T(w2, k + 8), x1, a2);                          \
            a2 = _mm256_fmadd_ps(CVT_##T(w2, k + 16), x2, a2);                         \
            a2 = _mm256_fmadd_ps(CVT_##T(w2, k + 24), x3, a2);                         \
            a3 = _mm256_fmadd_ps(CVT_##T(w3, k), x0, a3);                              \
            a3 = _mm256_fmadd_ps(CVT_##T(w3, k + 8), x1, a3);                          \
            a3 = _mm256_fmadd_ps(CVT_##T(w3, k + 16), x2, a3);                         \
            a3 = _mm256_fmadd_ps(CVT_##T(w3, k + 24), x3, a3);                         \
        }                                                                              \
        for (; k + 8 <= n; k += 8) {                                                   \
            __m256 xv = _mm256_loadu_ps(x + k);                                        \
            a0 = _mm256_fmadd_ps(CVT_##T(w0, k), xv, a0);                              \
            a1 = _mm256_fmadd_ps(CVT_##T(w1, k), xv, a1);                              \
            a2 = _mm256_fmadd_ps(CVT_##T(w2, k), xv, a2);                              \
            a3 = _mm256_fmadd_ps(CVT_##T(w3, k), xv, a3);                              \
        }                                                                              \
        float r0 = hsum8(a0), r1 = hsum8(a1), r2 = hsum8(a2), r3 = hsum8(a3);          \
        for (; k < n; k++) {                                                           \
            r0 = fmaf(LOAD(w0, k), x[k], r0);                                          \
            r1 = fmaf(LOAD(w1, k), x[k], r1);                                          \
            r2 = fmaf(LOAD(w2, k), x[k], r2);                                          \
            r3 = fmaf(LOAD(w3, k), x[k], r3);                                          \
        }                                                                              \
        out[0] = r0, out[1] = r1, out[2] = r2, out[3] = r3;                            \
    }                                                                                  \
    AVX2 static void cvt_##T##_avx(const void *w, int k0, int n, float *d)             \
    {                                                                                  \
        int i = 0;                                                                     \
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, CVT_##T(w, (size_t)k0 + i)); \
        for (; i < n; i++) d[i] = LOAD(w, (size_t)k0 + i);                             \
    }
typedef uint16_t bf16_t, f16_t;
typedef float f32_t;
#define PF_AHEAD 1024                    /* elements */
AVX_KERNELS(bf16, ld_bf16)
AVX_KERNELS(f16, ld_f16)
AVX_KERNELS(f32, ld_f32)

static const gemm_ops ops_c[3] = {
    {dot_bf16_c, dot4_bf16_c, cvt_bf16_c, 0, 0, 0, NULL}, {dot_f16_c, dot4_f16_c, cvt_f16_c, 0, 0, 0, NULL}, {dot_f32_c, dot4_f32_c, cvt_f32_c, 0, 0, 0, NULL}};
static const gemm_ops ops_avx[3] = {{dot_bf16_avx, dot4_bf16_avx, cvt_bf16_avx, 1, 0, 0, NULL},
                                    {dot_f16_avx, dot4_f16_avx, cvt_f16_avx, 1, 0, 0, NULL},
                                    {dot_f32_avx, dot4_f32_avx, cvt_f32_avx, 1, 0, 0, NULL}};
static const gemm_ops ops_avx512[3] = {{dot_bf16_avx, dot4_bf16_avx, cvt_bf16_avx, 2, 0, 0, NULL},
                                       {dot_f16_avx, dot4_f16_avx, cvt_f16_avx, 2, 0, 0, NULL},
                                       {dot_f32_avx, dot4_f32_avx, cvt_f32_avx, 2, 0, 0, NULL}};

int gemm_vec_level(void)
{
    static int level = -1;
    if (level < 0) {
        __builtin_cpu_init();
        unsigned ea, eb, ec, ed;          /* F16C by cpuid: clang's builtin does not know it */
        int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                   __get_cpuid(1, &ea, &eb, &ec, &ed) && (ec & bit_F16C) && !getenv("PHI3_NO_AVX");
        int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                     __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                     !getenv("PHI3_NO_AVX512");
        level = avx512 ? 2 : avx2 ? 1 : 0;
    }
    return level;
}

const gemm_ops *gemm_ops_level(st_dtype d, int level)
{
    int i = d == ST_BF16 ? 0 : d == ST_F16 ? 1 : d == ST_F32 ? 2 : -1;
    if (i < 0) return NULL;
    int v = gemm_vec_level() < level ? gemm_vec_level() : level;
    return v == 2 ? &ops_avx512[i] : v == 1 ? &ops_avx[i] : &ops_c[i];
}

const gemm_ops *gemm_ops_for(st_dtype d) { return gemm_ops_level(d, 2); }

float gemm_dot_f32(const float *a, const float *b, int n)
{
    return gemm_vec_level() ? dot_f32_avx(a, b, n) : dot_f32_c(a, b, n);
}

/* The prefetch of the next row block by the last token tile over a block: the first ub
 * bytes (K elements) of rows pf, pf + rb, ... (rows of them), spread evenly over steps k
 * steps (rows may be strided: attention's keys). */
typedef struct pfq {
    const char *p;
    size_t rb;
    int lines, line, row, rows, per;
} pfq;
static inline void pfq_init(pfq *q, const uint8_t *pf, size_t rb, size_t rows, size_t ub, int steps)
{
    *q = (pfq){(const char *)pf, rb, (int)((ub + 63) / 64), 0, 0, pf ? (int)rows : 0, 0};
    if (steps > 0) q->per = (q->rows * q->lines + steps - 1) / steps;
}
static inline __attribute__((always_inline)) void pfq_step(pfq *q)
{
    for (int j = 0; j < q->per && q->row < q->rows; j++) {
        _mm_prefetch(q->p + (size_t)q->row * q->rb + (size_t)q->line * 64, _MM_HINT_T0);
        if (++q->line == q->lines) q->line = 0, q->row++;
    }
}

/* Lane i of the result = the canonical reduction ((l0 + l1) + (l2 + l3)) + ((l4 + l5) +
 * (l6 + l7)) of the 8 lanes of r_i: an 8x8 transpose puts lane j of the 8 inputs in one
 * register, then the same tree runs across them. */
AVX2 static inline __attribute__((always_inline)) __m256 sum8x8(__m256 r0, __m256 r1, __m256 r2, __m256 r3,
                                                                 __m256 r4, __m256 r5, __m256 r6, __m256 r7)
{
    __m256 l[8] = {r0, r1, r2, r3, r4, r5, r6, r7};
    transpose8x8_ps(l);
    return _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(l[0], l[1]), _mm256_add_ps(l[2], l[3])),
                         _mm256_add_ps(_mm256_add_ps(l[4], l[5]), _mm256_add_ps(l[6], l[7])));
}

/* o[i] = lane i of v for i < n (n <= 8) */
AVX2 static inline void store_n(float *o, __m256 v, int n)
{
    if (n >= 8) _mm256_storeu_ps(o, v);
    else {
        float tmp[8];
        _mm256_storeu_ps(tmp, v);
        memcpy(o, tmp, (size_t)n * sizeof(float));
    }
}

/* store_n in the AVX-512 kernels: one masked store (a 6-row tile's memcpy call per token
 * was 3% of a server step of 8 streams) */
AVX512 static inline void store_nz(float *o, __m256 v, int n)
{
    _mm256_mask_storeu_ps(o, (__mmask8)(n >= 8 ? 0xFFu : (1u << n) - 1u), v);
}

/* ---- the blocked path ----
 * scratch: panel [GEMM_MB / 4 groups][GEMM_KC / 8 steps][4 rows][8], then the 8-lane
 * partial sums of GEMM_MB rows x n <= GEMM_NB tokens (see ACC), then one row's tail. */

#define PANEL_FLOATS ((size_t)GEMM_MB * GEMM_KC)
#define ACC_FLOATS ((size_t)GEMM_MB * GEMM_NB * 8)

size_t gemm_scratch_floats(void) { return PANEL_FLOATS + ACC_FLOATS + GEMM_KC + 8; }

_Static_assert(GEMM_MB % 8 == 0 && GEMM_KC % 8 == 0, "row blocks of whole 8-row tiles");

/* The partial sums of row r, token t: 8 floats at ACC(acc, ps, r, t). Rows are paired
 * (r, r + 1 side by side, 16 floats per token) so that an AVX-512 accumulator (two rows'
 * 8 lanes) loads and stores whole; ps = 16 n floats per row pair. */
#define ACC(acc, ps, r, t) ((acc) + (size_t)((r) >> 1) * (ps) + (size_t)(t) * 16 + ((r) & 1) * 8)

/* 4 rows (one panel group) x T tokens, AVX2: 4T ymm accumulators. */
AVX2 static inline __attribute__((always_inline)) void tile_y(const float *p, int ks, const float *x,
                                                               size_t ldx, float *acc, size_t ps, const int T)
{
    __m256 c[4][3];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
#pragma GCC unroll 3
        for (int t = 0; t < T; t++) c[r][t] = _mm256_loadu_ps(ACC(acc, ps, r, t));
    for (int s = 0; s < ks; s++) {
        __m256 xv[3];
#pragma GCC unroll 3
        for (int t = 0; t < T; t++) xv[t] = _mm256_loadu_ps(x + t * ldx + s * 8);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            __m256 w = _mm256_loadu_ps(p + s * 32 + r * 8);
#pragma GCC unroll 3
            for (int t = 0; t < T; t++) c[r][t] = _mm256_fmadd_ps(w, xv[t], c[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
#pragma GCC unroll 3
        for (int t = 0; t < T; t++) _mm256_storeu_ps(ACC(acc, ps, r, t), c[r][t]);
}

AVX2 static void tiles_y(const float *panel, int groups, int ks, const float *x, size_t ldx, int n, float *acc,
                         size_t ps)
{
    for (int g = 0; g < groups; g++) {
        const float *p = panel + (size_t)g * GEMM_KC * 4;
        float *a = acc + (size_t)2 * g * ps;      /* rows 4g.. = pairs 2g, 2g + 1 */
        int t = 0;
        for (; t + 3 <= n; t += 3) tile_y(p, ks, x + t * ldx, ldx, a + t * 16, ps, 3);
        if (n - t == 2) tile_y(p, ks, x + t * ldx, ldx, a + t * 16, ps, 2);
        else if (n - t == 1) tile_y(p, ks, x + t * ldx, ldx, a + t * 16, ps, 1);
    }
}

/* 8 rows (two panel groups) x T tokens, AVX-512: row pairs in zmm halves, 4T accumulators.
 * The panel is float32 (zb 0: per group and step s, 32 floats, rows 0,1 | rows 2,3), or
 * bf16 (zb 1, bf16 weights): per group and step 16 words of 32 bits, word j = the bf16 of
 * zmm (rows 0,1) lane j | that of zmm (rows 2,3) lane j << 16, so one 64-byte load and a
 * shift and a mask give both zmm as float32 exactly; half the panel's bytes, so it and
 * the activations fit L1 together. out (the last panel): the canonical reduction straight
 * from the registers (what reduce_avx does with stored partial sums), rows 0 .. nr - 1 of
 * the tile, instead of storing the partial sums. first (the first panel): the sums start
 * at zero in registers instead of from the buffer. */
AVX512 static inline __attribute__((always_inline)) void tile_z(const float *p0, const float *p1, int ks,
                                                                 const float *x, size_t ldx, float *acc,
                                                                 size_t ps, const int T, const int zb, float *out,
                                                                 size_t ldo, int nr, int first)
{
    __m512 c[4][6];
    const __m512i hm = _mm512_set1_epi32((int)0xffff0000);
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++)
#pragma GCC unroll 6
        for (int t = 0; t < T; t++) c[q][t] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(acc + q * ps + t * 16);
    for (int s = 0; s < ks; s++) {
        __m512 w[4];
        if (zb) {
            __m512i v0 = _mm512_loadu_si512(p0 + s * 16), v1 = _mm512_loadu_si512(p1 + s * 16);
            w[0] = _mm512_castsi512_ps(_mm512_slli_epi32(v0, 16));
            w[1] = _mm512_castsi512_ps(_mm512_and_si512(v0, hm));
            w[2] = _mm512_castsi512_ps(_mm512_slli_epi32(v1, 16));
            w[3] = _mm512_castsi512_ps(_mm512_and_si512(v1, hm));
        } else {
            w[0] = _mm512_loadu_ps(p0 + s * 32);
            w[1] = _mm512_loadu_ps(p0 + s * 32 + 16);
            w[2] = _mm512_loadu_ps(p1 + s * 32);
            w[3] = _mm512_loadu_ps(p1 + s * 32 + 16);
        }
#pragma GCC unroll 6
        for (int t = 0; t < T; t++) {
            __m512 xv = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + t * ldx + s * 8));
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++) c[q][t] = _mm512_fmadd_ps(w[q], xv, c[q][t]);
        }
    }
    if (out) {
#pragma GCC unroll 6
        for (int t = 0; t < T; t++)
            store_nz(out + (size_t)t * ldo,
                    sum8x8(_mm512_castps512_ps256(c[0][t]), _mm512_extractf32x8_ps(c[0][t], 1),
                           _mm512_castps512_ps256(c[1][t]), _mm512_extractf32x8_ps(c[1][t], 1),
                           _mm512_castps512_ps256(c[2][t]), _mm512_extractf32x8_ps(c[2][t], 1),
                           _mm512_castps512_ps256(c[3][t]), _mm512_extractf32x8_ps(c[3][t], 1)),
                    nr);
        return;
    }
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++)
#pragma GCC unroll 6
        for (int t = 0; t < T; t++) _mm512_storeu_ps(acc + q * ps + t * 16, c[q][t]);
}

/* A group of 4 bf16 rows (r[i]: row i, or NULL for a missing row: zeros), columns
 * k0 + 8 s .. for s < ks, into the bf16 panel's words */
AVX512 static void panel_bf16_pairs(const uint16_t *const r[4], int k0, int ks, uint32_t *dst)
{
    const __m128i z = _mm_setzero_si128();
    for (int s = 0; s < ks; s++) {
        int k = k0 + 8 * s;
        __m128i a = r[0] ? _mm_loadu_si128((const __m128i *)(r[0] + k)) : z;
        __m128i b = r[1] ? _mm_loadu_si128((const __m128i *)(r[1] + k)) : z;
        __m128i c = r[2] ? _mm_loadu_si128((const __m128i *)(r[2] + k)) : z;
        __m128i d = r[3] ? _mm_loadu_si128((const __m128i *)(r[3] + k)) : z;
        /* words 0-7: rows 0 | 2 << 16; words 8-15: rows 1 | 3 << 16 */
        _mm_storeu_si128((__m128i *)(dst + s * 16), _mm_unpacklo_epi16(a, c));
        _mm_storeu_si128((__m128i *)(dst + s * 16 + 4), _mm_unpackhi_epi16(a, c));
        _mm_storeu_si128((__m128i *)(dst + s * 16 + 8), _mm_unpacklo_epi16(b, d));
        _mm_storeu_si128((__m128i *)(dst + s * 16 + 12), _mm_unpackhi_epi16(b, d));
    }
}

/* The tiles over one panel (zb as in tile_z: bf16 panels come in whole pairs of groups;
 * a float32 panel's odd last group goes to the AVX2 tile). out: the last panel's, reduced
 * in registers (rows: the block's rows), or NULL. */
#define TILE_Z(ZB)                                                                     \
    switch (nt) {                                                                      \
    case 6: tile_z(p0, p1, ks, xt, ldx, a, ps, 6, ZB, o, ldo, nr, first); break;       \
    case 5: tile_z(p0, p1, ks, xt, ldx, a, ps, 5, ZB, o, ldo, nr, first); break;       \
    case 4: tile_z(p0, p1, ks, xt, ldx, a, ps, 4, ZB, o, ldo, nr, first); break;       \
    case 3: tile_z(p0, p1, ks, xt, ldx, a, ps, 3, ZB, o, ldo, nr, first); break;       \
    case 2: tile_z(p0, p1, ks, xt, ldx, a, ps, 2, ZB, o, ldo, nr, first); break;       \
    default: tile_z(p0, p1, ks, xt, ldx, a, ps, 1, ZB, o, ldo, nr, first); break;      \
    }
AVX512 static void tiles_z(const float *panel, int zb, int groups, int ks, const float *x, size_t ldx, int n,
                           float *acc, size_t ps, pfq *pq, float *out, size_t ldo, int rows, int first)
{
    /* tokens outer, row groups inner: a tile's 6 activation rows stay in L1 while the
     * row block's panel (also in L1) passes under them */
    int g2 = groups & ~1;
    size_t gs = (size_t)GEMM_KC * (zb ? 2 : 4);          /* 4-byte units per group */
    for (int t = 0; t < n; t += 6) {
        int nt = n - t < 6 ? n - t : 6;
        for (int g = 0; g < g2; g += 2) {
            const float *p0 = panel + (size_t)g * gs, *p1 = p0 + gs;
            const float *xt = x + t * ldx;
            float *a = acc + (size_t)2 * g * ps + t * 16;    /* pairs 2g .. 2g + 3 */
            float *o = out ? out + (size_t)t * ldo + 4 * g : NULL;   /* rows 4g .. 4g + 7 */
            int nr = rows - 4 * g < 8 ? rows - 4 * g : 8;
            pfq_step(pq);
            if (zb) TILE_Z(1)
            else TILE_Z(0)
        }
    }
    if (g2 < groups) tiles_y(panel + (size_t)g2 * gs, groups - g2, ks, x, ldx, n, acc + (size_t)2 * g2 * ps, ps);
}
#undef TILE_Z

/* Scalar tile: the same per-lane fmaf sequence as dot_*_c. */
static void tiles_c(const float *panel, int groups, int ks, const float *x, size_t ldx, int n, float *acc,
                    size_t ps)
{
    for (int g = 0; g < groups; g++)
        for (int r = 0; r < 4; r++)
            for (int t = 0; t < n; t++) {
                float *a = ACC(acc, ps, g * 4 + r, t);
                const float *xt = x + t * ldx;
                for (int s = 0; s < ks; s++) {
                    const float *w = panel + (size_t)g * GEMM_KC * 4 + s * 32 + r * 8;
                    for (int j = 0; j < 8; j++) a[j] = fmaf(w[j], xt[s * 8 + j], a[j]);
                }
            }
}

/* out[t * ldo + r] = the canonical reduction of the 8 lanes of acc row r, token t, for
 * r < rows, t < n; 8 rows at a time (sum8x8), stored as 8 consecutive floats of token t.
 * acc has room (zeros) for rows rounded up to 8. */
AVX2 static void reduce_avx(const float *acc, size_t ps, int rows, int n, float *out, size_t ldo)
{
    for (int r = 0; r < rows; r += 8)
        for (int t = 0; t < n; t++) {
            const float *a = ACC(acc, ps, r, t);      /* rows r, r + 1 at a, a + 8; next pair + ps */
            __m256 sum = sum8x8(_mm256_loadu_ps(a), _mm256_loadu_ps(a + 8), _mm256_loadu_ps(a + ps),
                                _mm256_loadu_ps(a + ps + 8), _mm256_loadu_ps(a + 2 * ps),
                                _mm256_loadu_ps(a + 2 * ps + 8), _mm256_loadu_ps(a + 3 * ps),
                                _mm256_loadu_ps(a + 3 * ps + 8));
            store_n(out + (size_t)t * ldo + r, sum, rows - r);
        }
}

/* ---- the few-token path: 1 .. small_max tokens (a decode step, a server step of
 * several decode streams, a short frame) ----
 * No panel: a register tile of rows x tokens holds its 8-lane accumulators across the
 * whole K while the weights are converted in registers, then the canonical reduction and
 * the tail. A block of rows (8 x K weights: L1/L2) is passed over by each token tile in
 * turn (tiles of balanced widths), so the weights come from memory once; the last tile
 * prefetches the next block. Tiles: AVX-512 8 rows (row pairs in zmm halves) x up to 6
 * tokens, and 6 rows x up to 8 tokens for 7..12 tokens (8 in one pass; gemm_bench,
 * interleaved: 8 tokens 0.85-0.93x the time of a 4-row x 8 tile, itself 0.89-0.92x that of
 * two 8 x 4 passes; 12 tokens 0.84-0.93x the 4-row x 12 tile; 16 tokens 1.05-1.17x the
 * 8 x 6 tiles, so not past 12), AVX2 4 rows x up to 3, scalar 4 rows x up to 4.
 * Measured (tests/bench/gemm_bench.c, the mid-size model's weights from DRAM, 2 threads;
 * an in-cache single-thread run, AVX-512, K = 1024 and 2816): one token 0.64-0.79x the time
 * of dot4 (AVX-512 and AVX2: the next-block prefetch keeps memory busy), and faster than
 * the blocked path up to about 96 tokens (~1.0x at 96, still at 128); 64 keeps a margin. */

#define SMALL_MAX 64            /* the default most tokens of the few-token path */
static int small_max = SMALL_MAX;

void gemm_set_small_max(int n) { small_max = n < 0 ? SMALL_MAX : n; }
int gemm_get_small_max(void) { return small_max; }

/* the tail k = K8 .. K - 1 of rows w_r (r < rows) for tokens t < T, in order */
#define SMALL_TAIL(LOAD)                                                               \
    for (int r = 0; r < rows && K8 < K; r++)                                           \
        for (int t = 0; t < T; t++) {                                                  \
            const uint8_t *wt = w + (size_t)r * rb;                                    \
            const float *xt = x + (size_t)t * ldx;                                     \
            float v = out[(size_t)t * ldo + r];                                        \
            for (int k = K8; k < K; k++) v = fmaf(LOAD(wt, k), xt[k], v);              \
            out[(size_t)t * ldo + r] = v;                                              \
        }

/* rows a (lanes 0-7) and b (lanes 8-15), columns k .. k + 7, as float32 */
#define CVTZ_bf16(a, b, k) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_inserti128_si256( \
    _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)((const uint16_t *)(a) + (k)))),            \
    _mm_loadu_si128((const __m128i *)((const uint16_t *)(b) + (k))), 1)), 16))
#define CVTZ_f16(a, b, k) _mm512_cvtph_ps(_mm256_inserti128_si256(                                     \
    _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)((const uint16_t *)(a) + (k)))),            \
    _mm_loadu_si128((const __m128i *)((const uint16_t *)(b) + (k))), 1))
#define CVTZ_f32(a, b, k) _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps((const float *)(a) + (k))), \
                                             _mm256_loadu_ps((const float *)(b) + (k)), 1)

/* rows a and b, columns k .. k + 15, as two CVTZ results (k .. k + 7, then k + 8 ..
 * k + 15): bf16 takes one 32-byte load of each row, then a word permute per result that
 * puts each weight in the top half of its lane and zeroes the bottom half (one vector
 * operation per 16 weights where CVTZ_bf16 takes three). In L2, one thread, 96 rows x
 * 1024 (2026-12-02, alternating binaries): one token 3.6 -> 2.8 us, 12 tokens 17.5-18.3 ->
 * 13.2-13.7 us, 8 tokens unchanged (24 FMAs per three conversions hide them). */
#define BF16_IDX(o) _mm512_set_epi16(16 + (o) + 7, 0, 16 + (o) + 6, 0, 16 + (o) + 5, 0, 16 + (o) + 4, 0, \
                                     16 + (o) + 3, 0, 16 + (o) + 2, 0, 16 + (o) + 1, 0, 16 + (o), 0,       \
                                     (o) + 7, 0, (o) + 6, 0, (o) + 5, 0, (o) + 4, 0, (o) + 3, 0, (o) + 2, 0, \
                                     (o) + 1, 0, (o), 0)
#define CVTZ2_bf16(a, b, k, w0, w1)                                                    \
    do {                                                                               \
        __m512i v_ = _mm512_inserti64x4(                                               \
            _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)((const uint16_t *)(a) + (k)))), \
            _mm256_loadu_si256((const __m256i *)((const uint16_t *)(b) + (k))), 1);    \
        w0 = _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, BF16_IDX(0), v_)); \
        w1 = _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, BF16_IDX(8), v_)); \
    } while (0)
#define CVTZ2_f16(a, b, k, w0, w1) ((w0) = CVTZ_f16(a, b, k), (w1) = CVTZ_f16(a, b, (k) + 8))
#define CVTZ2_f32(a, b, k, w0, w1) ((w0) = CVTZ_f32(a, b, k), (w1) = CVTZ_f32(a, b, (k) + 8))

/* rows (<= 8: the missing ones repeat the last, not stored) x T tokens */
#define SMALL_Z(T_, LOAD)                                                              \
    AVX512 static inline __attribute__((always_inline)) void small_z_##T_##_t(          \
        const uint8_t *w, size_t rb, int rows, int K, const float *x, size_t ldx, float *out, size_t ldo, \
        const uint8_t *pf, size_t pfr, const int T)                                    \
    {                                                                                  \
        const uint8_t *wr[8];                                                          \
        pfq pq;                                                                        \
        pfq_init(&pq, pf, rb, pfr, (size_t)K * sizeof(T_##_t), K / 8);                 \
        for (int r = 0; r < 8; r++) wr[r] = w + (size_t)(r < rows ? r : rows - 1) * rb; \
        int K8 = K & ~7;                                                               \
        __m512 c[4][6];                                                                \
        _Pragma("GCC unroll 4") for (int q = 0; q < 4; q++)                             \
            _Pragma("GCC unroll 6") for (int t = 0; t < T; t++) c[q][t] = _mm512_setzero_ps(); \
        int k2 = 0;                                                                    \
        /* two steps per pass (CVTZ2) while the 8 weight registers and 4T accumulators \
         * fit the 32 zmm */                                                           \
        for (; T <= 5 && k2 + 16 <= K8; k2 += 16) {                                    \
            pfq_step(&pq);                                                             \
            pfq_step(&pq);                                                             \
            __m512 wv[4], wu[4];                                                       \
            _Pragma("GCC unroll 4") for (int q = 0; q < 4; q++) CVTZ2_##T_(wr[2 * q], wr[2 * q + 1], k2, wv[q], wu[q]); \
            _Pragma("GCC unroll 6") for (int t = 0; t < T; t++) {                       \
                __m512 xv = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + t * ldx + k2)); \
                __m512 xu = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + t * ldx + k2 + 8)); \
                _Pragma("GCC unroll 4") for (int q = 0; q < 4; q++)                    \
                    c[q][t] = _mm512_fmadd_ps(wu[q], xu, _mm512_fmadd_ps(wv[q], xv, c[q][t])); \
            }                                                                          \
        }                                                                              \
        for (int k = k2; k < K8; k += 8) {                                             \
            pfq_step(&pq);                                                             \
            __m512 wv[4];                                                              \
            _Pragma("GCC unroll 4") for (int q = 0; q < 4; q++) wv[q] = CVTZ_##T_(wr[2 * q], wr[2 * q + 1], k); \
            _Pragma("GCC unroll 6") for (int t = 0; t < T; t++) {                       \
                __m512 xv = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + t * ldx + k));  \
                _Pragma("GCC unroll 4") for (int q = 0; q < 4; q++) c[q][t] = _mm512_fmadd_ps(wv[q], xv, c[q][t]); \
            }                                                                          \
        }                                                                              \
        _Pragma("GCC unroll 6") for (int t = 0; t < T; t++) {                           \
            __m256 s = sum8x8(_mm512_castps512_ps256(c[0][t]), _mm512_extractf32x8_ps(c[0][t], 1), \
                              _mm512_castps512_ps256(c[1][t]), _mm512_extractf32x8_ps(c[1][t], 1), \
                              _mm512_castps512_ps256(c[2][t]), _mm512_extractf32x8_ps(c[2][t], 1), \
                              _mm512_castps512_ps256(c[3][t]), _mm512_extractf32x8_ps(c[3][t], 1)); \
            store_nz(out + (size_t)t * ldo, s, rows);                                  \
        }                                                                              \
        SMALL_TAIL(LOAD)                                                               \
    }                                                                                  \
    AVX512 static void small_z_##T_(const uint8_t *w, size_t rb, int rows, int K, const float *x, size_t ldx, \
                                     float *out, size_t ldo, const uint8_t *pf, size_t pfr, int T) \
    {                                                                                  \
        switch (T) {                                                                   \
        case 6: small_z_##T_##_t(w, rb, rows, K, x, ldx, out, ldo, pf, pfr, 6); break;          \
        case 5: small_z_##T_##_t(w, rb, rows, K, x, ldx, out, ldo, pf, pfr, 5); break;          \
        case 4: small_z_##T_##_t(w, rb, rows, K, x, ldx, out, ldo, pf, pfr, 4); break;          \
        case 3: small_z_##T_##_t(w, rb, rows, K, x, ldx, out, ldo, pf, pfr, 3); break;          \
        case 2: small_z_##T_##_t(w, rb, rows, K, x, ldx, out, ldo, pf, pfr, 2); break;          \
        default: small_z_##T_##_t(w, rb, rows, K, x, ldx, out, ldo, pf, pfr, 1); break;         \
        }                                                                              \
    }
SMALL_Z(bf16, ld_bf16)
SMALL_Z(f16, ld_f16)
SMALL_Z(f32, ld_f32)

/* 6 rows (<= 6: the missing ones repeat the last, not stored) x T <= 8 tokens: three zmm
 * per token (row pairs in halves), 24 accumulators; 8 tokens in one pass over the weights */
#define SMALL_Z6(T_, LOAD)                                                             \
    AVX512 static inline __attribute__((always_inline)) void small_z6_##T_##_t(         \
        const uint8_t *w, size_t rb, int rows, int K, const float *x, size_t ldx, float *out, size_t ldo, \
        const uint8_t *pf, size_t pfr, const int T)                                    \
    {                                                                                  \
        const uint8_t *wr[6];                                                          \
        pfq pq;                                                                        \
        pfq_init(&pq, pf, rb, pfr, (size_t)K * sizeof(T_##_t), K / 8);                 \
        for (int r = 0; r < 6; r++) wr[r] = w + (size_t)(r < rows ? r : rows - 1) * rb; \
        int K8 = K & ~7;                                                               \
        __m512 c[3][8];                                                                \
        _Pragma("GCC unroll 3") for (int q = 0; q < 3; q++)                             \
            _Pragma("GCC unroll 8") for (int t = 0; t < T; t++) c[q][t] = _mm512_setzero_ps(); \
        int k2 = 0;                                                                    \
        for (; k2 + 16 <= K8; k2 += 16) {                                              \
            pfq_step(&pq);                                                             \
            pfq_step(&pq);                                                             \
            __m512 w0, w1, w2, u0, u1, u2;                                             \
            CVTZ2_##T_(wr[0], wr[1], k2, w0, u0);                                      \
            CVTZ2_##T_(wr[2], wr[3], k2, w1, u1);                                      \
            CVTZ2_##T_(wr[4], wr[5], k2, w2, u2);                                      \
            _Pragma("GCC unroll 8") for (int t = 0; t < T; t++) {                       \
                __m512 xv = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + t * ldx + k2)); \
                c[0][t] = _mm512_fmadd_ps(w0, xv, c[0][t]);                            \
                c[1][t] = _mm512_fmadd_ps(w1, xv, c[1][t]);                            \
                c[2][t] = _mm512_fmadd_ps(w2, xv, c[2][t]);                            \
            }                                                                          \
            _Pragma("GCC unroll 8") for (int t = 0; t < T; t++) {                       \
                __m512 xv = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + t * ldx + k2 + 8)); \
                c[0][t] = _mm512_fmadd_ps(u0, xv, c[0][t]);                            \
                c[1][t] = _mm512_fmadd_ps(u1, xv, c[1][t]);                            \
                c[2][t] = _mm512_fmadd_ps(u2, xv, c[2][t]);                            \
            }                                                                          \
        }                                                                              \
        for (; k2 < K8; k2 += 8) {                                                     \
            pfq_step(&pq);                                                             \
            __m512 w0 = CVTZ_##T_(wr[0], wr[1], k2), w1 = CVTZ_##T_(wr[2], wr[3], k2); \
            __m512 w2 = CVTZ_##T_(wr[4], wr[5], k2);                                   \
            _Pragma("GCC unroll 8") for (int t = 0; t < T; t++) {                       \
                __m512 xv = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + t * ldx + k2)); \
                c[0][t] = _mm512_fmadd_ps(w0, xv, c[0][t]);                            \
                c[1][t] = _mm512_fmadd_ps(w1, xv, c[1][t]);                            \
                c[2][t] = _mm512_fmadd_ps(w2, xv, c[2][t]);                            \
            }                                                                          \
        }                                                                              \
        _Pragma("GCC unroll 8") for (int t = 0; t < T; t++) {                           \
            __m256 a0 = _mm512_castps512_ps256(c[0][t]), a1 = _mm512_extractf32x8_ps(c[0][t], 1); \
            __m256 a2 = _mm512_castps512_ps256(c[1][t]), a3 = _mm512_extractf32x8_ps(c[1][t], 1); \
            __m256 a4 = _mm512_castps512_ps256(c[2][t]), a5 = _mm512_extractf32x8_ps(c[2][t], 1); \
            store_nz(out + (size_t)t * ldo, sum8x8(a0, a1, a2, a3, a4, a5, a4, a5), rows); \
        }                                                                              \
        SMALL_TAIL(LOAD)                                                               \
    }                                                                                  \
    AVX512 static void small_z6_##T_(const uint8_t *w, size_t rb, int rows, int K, const float *x, size_t ldx, \
                                      float *out, size_t ldo, const uint8_t *pf, size_t pfr, int T) \
    {                                                                                  \
        switch (T) {                                                                   \
        case 8: small_z6_##T_##_t(w, rb, rows, K, x, ldx, out, ldo, pf, pfr, 8); break; \
        case 7: small_z6_##T_##_t(w, rb, rows, K, x, ldx, out, ldo, pf, pfr, 7); break; \
        case 6: small_z6_##T_##_t(w, rb, rows, K, x, ldx, out, ldo, pf, pfr, 6); break; \
        case 5: small_z6_##T_##_t(w, rb, rows, K, x, ldx, out, ldo, pf, pfr, 5); break; \
        case 4: small_z6_##T_##_t(w, rb, rows, K, x, ldx, out, ldo, pf, pfr, 4); break; \
        case 3: small_z6_##T_##_t(w, rb, rows, K, x, ldx, out, ldo, pf, pfr, 3); break; \
        case 2: small_z6_##T_##_t(w, rb, rows, K, x, ldx, out, ldo, pf, pfr, 2); break; \
        default: small_z6_##T_##_t(w, rb, rows, K, x, ldx, out, ldo, pf, pfr, 1); break; \
        }                                                                              \
    }
/* AVX-512, one token: 16 rows (8 accumulators, so 8 independent FMA chains where 8 rows
 * give 4: a key tile of attention's decode scores is latency-bound, not bandwidth-bound);
 * rows <= 16, the missing ones repeat the last and are not stored */
#define SMALL_Z16(T_, LOAD)                                                            \
    AVX512 static void small_z16_##T_(const uint8_t *w, size_t rb, int rows, int K, const float *x, size_t ldx, \
                                       float *out, size_t ldo, const uint8_t *pf, size_t pfr, int T) \
    {                                                                                  \
        const uint8_t *wr[16];                                                         \
        pfq pq;                                                                        \
        pfq_init(&pq, pf, rb, pfr, (size_t)K * sizeof(T_##_t), K / 8);                 \
        for (int r = 0; r < 16; r++) wr[r] = w + (size_t)(r < rows ? r : rows - 1) * rb; \
        int K8 = K & ~7;                                                               \
        __m512 c[8];                                                                   \
        _Pragma("GCC unroll 8") for (int q = 0; q < 8; q++) c[q] = _mm512_setzero_ps(); \
        int k2 = 0;                                                                    \
        for (; k2 + 16 <= K8; k2 += 16) {                                              \
            pfq_step(&pq);                                                             \
            pfq_step(&pq);                                                             \
            __m512 xv = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + k2));               \
            __m512 xu = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + k2 + 8));           \
            _Pragma("GCC unroll 8") for (int q = 0; q < 8; q++) {                      \
                __m512 w0, w1;                                                         \
                CVTZ2_##T_(wr[2 * q], wr[2 * q + 1], k2, w0, w1);                      \
                c[q] = _mm512_fmadd_ps(w1, xu, _mm512_fmadd_ps(w0, xv, c[q]));         \
            }                                                                          \
        }                                                                              \
        for (; k2 < K8; k2 += 8) {                                                     \
            pfq_step(&pq);                                                             \
            __m512 xv = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + k2));               \
            _Pragma("GCC unroll 8") for (int q = 0; q < 8; q++)                         \
                c[q] = _mm512_fmadd_ps(CVTZ_##T_(wr[2 * q], wr[2 * q + 1], k2), xv, c[q]); \
        }                                                                              \
        for (int h = 0; h < 2 && h * 8 < rows; h++) {                                  \
            const __m512 *d = c + 4 * h;                                               \
            __m256 sv = sum8x8(_mm512_castps512_ps256(d[0]), _mm512_extractf32x8_ps(d[0], 1), \
                               _mm512_castps512_ps256(d[1]), _mm512_extractf32x8_ps(d[1], 1), \
                               _mm512_castps512_ps256(d[2]), _mm512_extractf32x8_ps(d[2], 1), \
                               _mm512_castps512_ps256(d[3]), _mm512_extractf32x8_ps(d[3], 1)); \
            store_nz(out + 8 * h, sv, rows - 8 * h);                                   \
        }                                                                              \
        SMALL_TAIL(LOAD)                                                               \
    }
SMALL_Z16(bf16, ld_bf16)
SMALL_Z16(f16, ld_f16)
SMALL_Z16(f32, ld_f32)

SMALL_Z6(bf16, ld_bf16)
SMALL_Z6(f16, ld_f16)
SMALL_Z6(f32, ld_f32)

/* AVX-512, 7..12 tokens, whole tiles of 4 rows: the tile with tokens in the zmm halves.
 * A pair's accumulator holds row r's canonical chain for token 2p in lanes 0-7 and for
 * token 2p + 1 in lanes 8-15; the weights' 8 columns are duplicated into both halves and
 * multiplied by a packed copy of x that holds the pair side by side (xq + s * 16 P + 16 p:
 * columns 8 s .. 8 s + 7 of token 2p, then of token 2p + 1; a missing token is zeros).
 * Each lane sees the same weights, x and FMAs in the same order as in SMALL_Z6, so the
 * bits are the same; the x operand is a plain load the FMA takes from memory, where the
 * rows-in-halves tile needs a separate 8-float broadcast per token and step. The 2P x
 * vectors of a step are loaded once into registers for all 4 rows (16 accumulators + 8 x
 * + 2 weights of the 32 zmm), and a 16-row block is 4 whole tiles. The first form of this
 * tile had 6 rows and took x from memory once per row (24 accumulators leave no room):
 * its loads shared the ports with the FMAs, and 16-row blocks split 6 + 6 + 4, the 4 on
 * the rows-in-halves tile. One thread, thread CPU time, in L2 (96 rows x 3072 bf16),
 * 2026-12-03, 2-vCPU Intel Xeon (zmm FMA peak 126 GFLOP/s per core), three alternating
 * runs: 8 tokens 60.3-60.5 GFLOP/s (6 rows) -> 73.0-73.1 (4 rows), 12 tokens 59.7-59.8
 * -> 67.4-67.7, 10 tokens 60.0 -> 69.5, 7 tokens 70.2 -> 70.4. */
#define DUP_bf16(p, k, o) _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, BF16_DUP(o), \
    _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)((const uint16_t *)(p) + (k))))))
/* the same for columns k .. k + 7 only (no load past them) */
#define DUP8_bf16(p, k) _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, BF16_DUP(0), \
    _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)((const uint16_t *)(p) + (k))))))
#define DUP8_f16(p, k) DUP_f16(p, k, 0)
#define DUP8_f32(p, k) DUP_f32(p, k, 0)
#define DUP_f16(p, k, o) \
    _mm512_cvtph_ps(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)((const uint16_t *)(p) + (k) + (o)))))
#define DUP_f32(p, k, o) _mm512_broadcast_f32x8(_mm256_loadu_ps((const float *)(p) + (k) + (o)))
#define BF16_DUP(o) _mm512_set_epi16((o) + 7, 0, (o) + 6, 0, (o) + 5, 0, (o) + 4, 0, (o) + 3, 0, (o) + 2, 0, \
                                     (o) + 1, 0, (o), 0, (o) + 7, 0, (o) + 6, 0, (o) + 5, 0, (o) + 4, 0,   \
                                     (o) + 3, 0, (o) + 2, 0, (o) + 1, 0, (o), 0)

#define SMALL_Z4T(T_, LOAD)                                                            \
    AVX512 static inline __attribute__((always_inline)) void small_z4t_##T_##_t(        \
        const uint8_t *w, size_t rb, int K, const float *x, size_t ldx, const float *xq, \
        float *out, size_t ldo, const uint8_t *pf, size_t pfr, int T, const int P)      \
    {                                                                                  \
        const int rows = 4;                                                            \
        const uint8_t *wr[4];                                                          \
        for (int r = 0; r < 4; r++) wr[r] = w + (size_t)r * rb;                        \
        enum { LPS = 4 * 16 * (int)sizeof(T_##_t) / 64 };                              \
        const char *pp = pf && rb == (size_t)K * sizeof(T_##_t) ? (const char *)pf : NULL; \
        const char *pe = pp ? pp + pfr * rb : NULL;                                    \
        int K8 = K & ~7;                                                               \
        __m512 c[4][4];                                                                \
        _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++)                             \
            _Pragma("GCC unroll 4") for (int p = 0; p < P; p++) c[r][p] = _mm512_setzero_ps(); \
        int k2 = 0;                                                                    \
        for (; k2 + 16 <= K8; k2 += 16, xq += 32 * P) {                                \
            if (pp && pp < pe) {                                                       \
                _Pragma("GCC unroll 4") for (int j = 0; j < LPS; j++) _mm_prefetch(pp + 64 * j, _MM_HINT_T0); \
                pp += 64 * LPS;                                                        \
            }                                                                          \
            __m512 xl[4], xh[4];                                                       \
            _Pragma("GCC unroll 4") for (int p = 0; p < P; p++) {                       \
                xl[p] = _mm512_loadu_ps(xq + 16 * p);                                  \
                xh[p] = _mm512_loadu_ps(xq + 16 * (P + p));                            \
            }                                                                          \
            _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) {                       \
                __m512 lo = DUP_##T_(wr[r], k2, 0), hi = DUP_##T_(wr[r], k2, 8);          \
                _Pragma("GCC unroll 4") for (int p = 0; p < P; p++)                     \
                    c[r][p] = _mm512_fmadd_ps(lo, xl[p], c[r][p]);                      \
                _Pragma("GCC unroll 4") for (int p = 0; p < P; p++)                     \
                    c[r][p] = _mm512_fmadd_ps(hi, xh[p], c[r][p]);                      \
            }                                                                          \
        }                                                                              \
        if (k2 < K8) {                                                                 \
            _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) {                       \
                __m512 lo = DUP8_##T_(wr[r], k2);                                       \
                _Pragma("GCC unroll 4") for (int p = 0; p < P; p++)                     \
                    c[r][p] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xq + 16 * p), c[r][p]); \
            }                                                                          \
        }                                                                              \
        _Pragma("GCC unroll 4") for (int p = 0; p < P; p++) {                           \
            store_nz(out + (size_t)(2 * p) * ldo,                                      \
                     sum8x8(_mm512_castps512_ps256(c[0][p]), _mm512_castps512_ps256(c[1][p]), \
                            _mm512_castps512_ps256(c[2][p]), _mm512_castps512_ps256(c[3][p]), \
                            _mm512_castps512_ps256(c[3][p]), _mm512_castps512_ps256(c[3][p]), \
                            _mm512_castps512_ps256(c[3][p]), _mm512_castps512_ps256(c[3][p])), 4); \
            if (2 * p + 1 < T)                                                         \
                store_nz(out + (size_t)(2 * p + 1) * ldo,                              \
                         sum8x8(_mm512_extractf32x8_ps(c[0][p], 1), _mm512_extractf32x8_ps(c[1][p], 1), \
                                _mm512_extractf32x8_ps(c[2][p], 1), _mm512_extractf32x8_ps(c[3][p], 1), \
                                _mm512_extractf32x8_ps(c[3][p], 1), _mm512_extractf32x8_ps(c[3][p], 1), \
                                _mm512_extractf32x8_ps(c[3][p], 1), _mm512_extractf32x8_ps(c[3][p], 1)), 4); \
        }                                                                              \
        SMALL_TAIL(LOAD)                                                               \
    }                                                                                  \
    AVX512 static void small_z4t_##T_(const uint8_t *w, size_t rb, int K, const float *x, size_t ldx, \
                                       const float *xq, float *out, size_t ldo, const uint8_t *pf, \
                                       size_t pfr, int T)                              \
    {                                                                                  \
        switch ((T + 1) / 2) {                                                         \
        case 4: small_z4t_##T_##_t(w, rb, K, x, ldx, xq, out, ldo, pf, pfr, T, 4); break; \
        case 3: small_z4t_##T_##_t(w, rb, K, x, ldx, xq, out, ldo, pf, pfr, T, 3); break; \
        default: small_z4t_##T_##_t(w, rb, K, x, ldx, xq, out, ldo, pf, pfr, T, 2); break; \
        }                                                                              \
    }
SMALL_Z4T(bf16, ld_bf16)
SMALL_Z4T(f16, ld_f16)
SMALL_Z4T(f32, ld_f32)

#define SMALL_Y(T_, LOAD)                                                              \
    AVX2 static inline __attribute__((always_inline)) void small_y_##T_##_t(            \
        const uint8_t *w, size_t rb, int rows, int K, const float *x, size_t ldx, float *out, size_t ldo, \
        const uint8_t *pf, size_t pfr, const int T)                                    \
    {                                                                                  \
        const uint8_t *wr[4];                                                          \
        for (int r = 0; r < 4; r++) wr[r] = w + (size_t)(r < rows ? r : rows - 1) * rb; \
        int K8 = K & ~7;                                                               \
        pfq pq;                                                                        \
        pfq_init(&pq, pf, rb, pfr, (size_t)K * sizeof(T_##_t), K / 8);                 \
        __m256 c[4][3];                                                                \
        _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++)                             \
            _Pragma("GCC unroll 3") for (int t = 0; t < T; t++) c[r][t] = _mm256_setzero_ps(); \
        for (int k = 0; k < K8; k += 8) {                                              \
            pfq_step(&pq);                                                             \
            __m256 xv[3];                                                              \
            _Pragma("GCC unroll 3") for (int t = 0; t < T; t++) xv[t] = _mm256_loadu_ps(x + t * ldx + k); \
            _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) {                       \
                __m256 wv = CVT_##T_(wr[r], k);                                        \
                _Pragma("GCC unroll 3") for (int t = 0; t < T; t++) c[r][t] = _mm256_fmadd_ps(wv, xv[t], c[r][t]); \
            }                                                                          \
        }                                                                              \
        for (int t = 0; t < T; t++)                                                    \
            for (int r = 0; r < rows; r++) out[(size_t)t * ldo + r] = hsum8(c[r][t]);  \
        SMALL_TAIL(LOAD)                                                               \
    }                                                                                  \
    AVX2 static void small_y_##T_(const uint8_t *w, size_t rb, int rows, int K, const float *x, size_t ldx, \
                                  float *out, size_t ldo, const uint8_t *pf, size_t pfr, int T) \
    {                                                                                  \
        switch (T) {                                                                   \
        case 3: small_y_##T_##_t(w, rb, rows, K, x, ldx, out, ldo, pf, pfr, 3); break;          \
        case 2: small_y_##T_##_t(w, rb, rows, K, x, ldx, out, ldo, pf, pfr, 2); break;          \
        default: small_y_##T_##_t(w, rb, rows, K, x, ldx, out, ldo, pf, pfr, 1); break;         \
        }                                                                              \
    }
SMALL_Y(bf16, ld_bf16)
SMALL_Y(f16, ld_f16)
SMALL_Y(f32, ld_f32)

#define SMALL_C(T_, LOAD)                                                              \
    static void small_c_##T_(const uint8_t *w, size_t rb, int rows, int K, const float *x, size_t ldx, \
                             float *out, size_t ldo, const uint8_t *pf, size_t pfr, int T) \
    {                                                                                  \
        float a[4][4][8] = {{{0}}};                                                    \
        int K8 = K & ~7;                                                               \
        for (int k = 0; k < K8; k += 8)                                                \
            for (int r = 0; r < rows; r++)                                             \
                for (int t = 0; t < T; t++)                                            \
                    for (int j = 0; j < 8; j++)                                        \
                        a[r][t][j] = fmaf(LOAD(w + (size_t)r * rb, k + j), x[(size_t)t * ldx + k + j], a[r][t][j]); \
        for (int t = 0; t < T; t++)                                                    \
            for (int r = 0; r < rows; r++) out[(size_t)t * ldo + r] = reduce8(a[r][t]); \
        SMALL_TAIL(LOAD)                                                               \
    }
SMALL_C(bf16, ld_bf16)
SMALL_C(f16, ld_f16)
SMALL_C(f32, ld_f32)

/* A panel row (gemm_block): dst[s * 32 + j] = w[k0 + 8 s + j] as float32 for s < ks,
 * j < 8, converted straight into the panel's layout. */
#define PANEL_KERNELS(T_, LOAD)                                                        \
    static void panel_##T_##_c(const void *w, int k0, int ks, float *dst)              \
    {                                                                                  \
        for (int s = 0; s < ks; s++)                                                   \
            for (int j = 0; j < 8; j++) dst[s * 32 + j] = LOAD(w, (size_t)k0 + 8 * s + j); \
    }                                                                                  \
    AVX2 static void panel_##T_##_avx(const void *w, int k0, int ks, float *dst)       \
    {                                                                                  \
        for (int s = 0; s < ks; s++) _mm256_storeu_ps(dst + s * 32, CVT_##T_(w, (size_t)k0 + 8 * s)); \
    }
PANEL_KERNELS(bf16, ld_bf16)
PANEL_KERNELS(f16, ld_f16)
PANEL_KERNELS(f32, ld_f32)

typedef void (*small_fn)(const uint8_t *w, size_t rb, int rows, int K, const float *x, size_t ldx, float *out,
                         size_t ldo, const uint8_t *pf, size_t pfr, int T);
typedef void (*small_p_fn)(const uint8_t *w, size_t rb, int K, const float *x, size_t ldx, const float *xq,
                           float *out, size_t ldo, const uint8_t *pf, size_t pfr, int T);
typedef struct small_kernel {
    const gemm_ops *op;
    small_fn fn;
    int rows, tokens;           /* the register tile */
    void (*panel)(const void *w, int k0, int ks, float *dst);
    size_t es;                  /* bytes per weight */
    small_p_fn pfn;             /* the tile on packed x, whole tiles of prows rows only (or NULL) */
    int prows;
} small_kernel;
static const small_kernel smalls[] = {
    {&ops_avx512[0], small_z_bf16, 8, 6, panel_bf16_avx, 2, NULL, 0},
    {&ops_avx512[1], small_z_f16, 8, 6, panel_f16_avx, 2, NULL, 0},
    {&ops_avx512[2], small_z_f32, 8, 6, panel_f32_avx, 4, NULL, 0},
    {&ops_avx[0], small_y_bf16, 4, 3, panel_bf16_avx, 2, NULL, 0},
    {&ops_avx[1], small_y_f16, 4, 3, panel_f16_avx, 2, NULL, 0},
    {&ops_avx[2], small_y_f32, 4, 3, panel_f32_avx, 4, NULL, 0},
    {&ops_c[0], small_c_bf16, 4, 4, panel_bf16_c, 2, NULL, 0},
    {&ops_c[1], small_c_f16, 4, 4, panel_f16_c, 2, NULL, 0},
    {&ops_c[2], small_c_f32, 4, 4, panel_f32_c, 4, NULL, 0}
};

/* AVX-512, 7..12 tokens: 6 rows x up to 8 tokens (a server step of 8 streams in one pass);
 * whole tiles of 4 rows on x packed by gemm_pack_x take SMALL_Z4T, the rest (a
 * thread's last rows, callers without packed x) the 6-row tile with rows in the halves */
static const small_kernel smalls6[] = {
    {&ops_avx512[0], small_z6_bf16, 6, 8, panel_bf16_avx, 2, small_z4t_bf16, 4},
    {&ops_avx512[1], small_z6_f16, 6, 8, panel_f16_avx, 2, small_z4t_f16, 4},
    {&ops_avx512[2], small_z6_f32, 6, 8, panel_f32_avx, 4, small_z4t_f32, 4}
};

/* AVX-512, one token: 16 rows */
static const small_kernel smalls16[] = {
    {&ops_avx512[0], small_z16_bf16, 16, 1, panel_bf16_avx, 2, NULL, 0},
    {&ops_avx512[1], small_z16_f16, 16, 1, panel_f16_avx, 2, NULL, 0},
    {&ops_avx512[2], small_z16_f32, 16, 1, panel_f32_avx, 4, NULL, 0}
};

static const small_kernel *small_for(const gemm_ops *op, int n)
{
    for (size_t i = 0; n == 1 && i < sizeof smalls16 / sizeof *smalls16; i++)
        if (smalls16[i].op == op) return &smalls16[i];
    for (size_t i = 0; n >= 7 && n <= 12 && i < sizeof smalls6 / sizeof *smalls6; i++)
        if (smalls6[i].op == op) return &smalls6[i];
    for (size_t i = 0; i < sizeof smalls / sizeof *smalls; i++)
        if (smalls[i].op == op) return &smalls[i];
    return NULL;
}

/* the width of token tile i of n tokens in `tiles` balanced tiles, and the packed x's
 * floats per column of it (whole token pairs: SMALL_Z4T) */
static int tile_width(int n, int tiles, int i) { return n / tiles + (i < n % tiles); }
static int tile_xq(int T) { return 2 * ((T + 1) / 2); }

/* rows [r0, r1) x n tokens: token tiles of balanced sizes pass over each row block */
static void gemm_small(const small_kernel *sk, const uint8_t *w, size_t rb, int K, int r0, int r1,
                       const float *x, size_t ldx, int n, float *out, size_t ldo, const float *xq)
{
    int tiles = (n + sk->tokens - 1) / sk->tokens, K8 = K & ~7;
    int packed = xq && sk->pfn, step = packed ? sk->prows : sk->rows;
    for (int r = r0; r < r1; r += step) {
        int rows = r1 - r < step ? r1 - r : step;
        for (int i = 0, t = 0, xo = 0; i < tiles; i++) {
            int T = tile_width(n, tiles, i);
            /* the last tile over a block prefetches the next block of rows, spread over its
             * k steps: while the last tile computes from cache, memory is kept busy */
            int nr = r1 - (r + step) < step ? r1 - (r + step) : step;
            const uint8_t *pf = i == tiles - 1 && nr > 0 ? w + (size_t)(r + step) * rb : NULL;
            if (packed && rows == step)
                sk->pfn(w + (size_t)r * rb, rb, K, x + (size_t)t * ldx, ldx, xq + (size_t)xo * K8,
                        out + (size_t)t * ldo + r, ldo, pf, pf ? (size_t)nr : 0, T);
            else
                sk->fn(w + (size_t)r * rb, rb, rows, K, x + (size_t)t * ldx, ldx, out + (size_t)t * ldo + r, ldo, pf,
                       pf ? (size_t)nr : 0, T);
            t += T, xo += tile_xq(T);
        }
    }
}

static void gemm_block(const gemm_ops *op, const uint8_t *w, size_t row_bytes, int K, int rows,
                       const float *x, size_t ldx, int n, float *out, size_t ldo, float *scratch,
                       const uint8_t *next, int next_rows)
{
    float *panel = scratch, *acc = scratch + PANEL_FLOATS, *tail = acc + ACC_FLOATS;
    const small_kernel *sk = small_for(op, 0);
    int K8 = K & ~7, groups = (rows + 3) / 4;
    size_t ps = (size_t)n * 16;                  /* acc floats per row pair */
    int zb = op == &ops_avx512[0];       /* bf16 on AVX-512: the bf16-pair panel */
    if (zb && groups % 2) groups++;     /* whole pairs of groups (the extra rows are zero) */
    /* the partial sums start at zero: in the AVX-512 tiles' registers at the first panel
     * (whole pairs of groups, all of them tile_z's), else here (padded rows too) */
    /* the last panel's tiles also reduce the sums in registers, for bf16 and float32
     * panels alike (no pass of reduce_avx over memory) */
    int in_tiles = op->vec == 2 && groups % 2 == 0 && K8 > 0;
    if (!in_tiles) memset(acc, 0, (size_t)((rows + 7) & ~7) / 2 * ps * sizeof(float));
    for (int kb = 0; kb < K8; kb += GEMM_KC) {
        int kc = K8 - kb < GEMM_KC ? K8 - kb : GEMM_KC, ks = kc / 8;
        if (zb)
            for (int g = 0; g < groups; g++) {
                const uint16_t *r4[4];
                for (int i = 0; i < 4; i++)
                    r4[i] = 4 * g + i < rows ? (const uint16_t *)(w + (size_t)(4 * g + i) * row_bytes) : NULL;
                panel_bf16_pairs(r4, kb, ks, (uint32_t *)panel + (size_t)g * GEMM_KC * 2);
            }
        else
            for (int r = 0; r < groups * 4; r++) {
                float *dst = panel + (size_t)(r / 4) * GEMM_KC * 4 + (r % 4) * 8;
                if (r >= rows) {
                    for (int s = 0; s < ks; s++) memset(dst + s * 32, 0, 8 * sizeof(float));
                    continue;
                }
                if (sk) sk->panel(w + (size_t)r * row_bytes, kb, ks, dst);
                else if (op->panel) op->panel(w + (size_t)r * row_bytes, kb, kc, dst);
                else {
                    op->cvt(w + (size_t)r * row_bytes, kb, kc, tail);
                    for (int s = 0; s < ks; s++) memcpy(dst + s * 32, tail + s * 8, 8 * sizeof(float));
                }
            }
        const float *xb = x + kb;
        /* while the tiles run from cache, the next panel's weights come from memory: this
         * block's next columns, or (last panel) the first columns of the block after it */
        pfq pq;
        /* bytes of a panel's columns: dense (es per weight) or quantized blocks (a panel's
         * GEMM_KC columns are whole blocks) */
        size_t es = sk ? sk->es : 0;
        size_t pbytes = es ? (size_t)GEMM_KC * es : op->blk ? (size_t)GEMM_KC / op->blk * op->blk_bytes : 0;
        size_t poff = es ? (size_t)(kb + GEMM_KC) * es : op->blk ? (size_t)(kb + GEMM_KC) / op->blk * op->blk_bytes : 0;
        const uint8_t *pf = !pbytes ? NULL : kb + GEMM_KC < K8 ? w + poff : next;
        int pfr = kb + GEMM_KC < K8 ? rows : next_rows;
        pfq_init(&pq, pf, row_bytes, (size_t)pfr, pbytes, ((n + 5) / 6) * (groups / 2));
        if (op->vec == 2)
            tiles_z(panel, zb, groups, ks, xb, ldx, n, acc, ps, &pq, in_tiles && kb + GEMM_KC >= K8 ? out : NULL, ldo, rows,
                    in_tiles && kb == 0);
        else if (op->vec == 1) tiles_y(panel, groups, ks, xb, ldx, n, acc, ps);
        else tiles_c(panel, groups, ks, xb, ldx, n, acc, ps);
    }
    if (in_tiles) {
        /* reduced by the last panel's tiles */
    } else if (op->vec) reduce_avx(acc, ps, rows, n, out, ldo);
    else
        for (int t = 0; t < n; t++)
            for (int r = 0; r < rows; r++) out[(size_t)t * ldo + r] = reduce8(ACC(acc, ps, r, t));
    for (int r = 0; r < rows && K8 < K; r++) {
        op->cvt(w + (size_t)r * row_bytes, K8, K - K8, tail);
        for (int t = 0; t < n; t++) {
            float v = out[(size_t)t * ldo + r];
            const float *xt = x + t * ldx;
            for (int k = K8; k < K; k++) v = fmaf(tail[k - K8], xt[k], v);
            out[(size_t)t * ldo + r] = v;
        }
    }
}

/* the kernel of the few-token path that takes x packed, for n tokens (or NULL) */
static const small_kernel *small_packed(const gemm_ops *op, int n, int K)
{
    const small_kernel *sk = n <= small_max && (K & ~7) >= 8 ? small_for(op, n) : NULL;
    return sk && sk->pfn ? sk : NULL;
}

size_t gemm_xq_floats(const gemm_ops *op, int n, int K)
{
    const small_kernel *sk = small_packed(op, n, K);
    if (!sk) return 0;
    int tiles = (n + sk->tokens - 1) / sk->tokens;
    size_t f = 0;
    for (int i = 0; i < tiles; i++) f += (size_t)tile_xq(tile_width(n, tiles, i)) * (K & ~7);
    return f;
}

/* tile i's tokens in pairs: its P = (T + 1) / 2 pairs of 16 floats per column block s
 * (columns 8 s .. 8 s + 7 of token 2p, then of 2p + 1; a missing token is zeros) */
void gemm_pack_x(const gemm_ops *op, const float *x, size_t ldx, int n, int K, float *xq)
{
    const small_kernel *sk = small_packed(op, n, K);
    if (!sk) return;
    int tiles = (n + sk->tokens - 1) / sk->tokens, K8 = K & ~7;
    for (int i = 0, t = 0; i < tiles; i++) {
        int T = tile_width(n, tiles, i), P = tile_xq(T) / 2;
        for (int s = 0; s < K8 / 8; s++)
            for (int u = 0; u < 2 * P; u++) {
                float *d = xq + (size_t)s * 16 * P + 16 * (u / 2) + 8 * (u % 2);
                if (u < T) memcpy(d, x + (size_t)(t + u) * ldx + 8 * s, 8 * sizeof(float));
                else memset(d, 0, 8 * sizeof(float));
            }
        t += T, xq += (size_t)tile_xq(T) * K8;
    }
}

void gemm_rows_xq(const gemm_ops *op, const uint8_t *w, size_t row_bytes, int K, int r0, int r1,
                  const float *x, size_t ldx, int n, float *out, size_t ldo, float *scratch, const float *xq)
{
    const small_kernel *sk;
    if (n <= small_max && (sk = small_for(op, n))) {
        gemm_small(sk, w, row_bytes, K, r0, r1, x, ldx, n, out, ldo, small_packed(op, n, K) ? xq : NULL);
        return;
    }
    if (n < 4) {
        /* other dtypes (quantized: decode/qdot.c's ops), few tokens: 4 rows per pass */
        for (int t = 0; t < n; t++) {
            const float *xt = x + (size_t)t * ldx;
            float *o = out + (size_t)t * ldo;
            int r = r0;
            for (; r + 4 <= r1; r += 4) op->dot4(w + (size_t)r * row_bytes, row_bytes, xt, K, o + r);
            for (; r < r1; r++) o[r] = op->dot(w + (size_t)r * row_bytes, xt, K);
        }
        return;
    }
    for (int rb = r0; rb < r1; rb += GEMM_MB) {
        int rows = r1 - rb < GEMM_MB ? r1 - rb : GEMM_MB;
        for (int t = 0; t < n; t += GEMM_NB) {
            int nt = n - t < GEMM_NB ? n - t : GEMM_NB;
            /* the last token chunk over a block prefetches the next block, the others this one */
            int nr = t + nt < n ? rows : r1 - (rb + rows) < GEMM_MB ? r1 - (rb + rows) : GEMM_MB;
            const uint8_t *nx = t + nt < n ? w + (size_t)rb * row_bytes : w + (size_t)(rb + rows) * row_bytes;
            gemm_block(op, w + (size_t)rb * row_bytes, row_bytes, K, rows, x + (size_t)t * ldx, ldx, nt,
                       out + (size_t)t * ldo + rb, ldo, scratch, nr > 0 ? nx : NULL, nr);
        }
    }
}

/* ---- float32 -> IEEE half (the f16 KV cache) ---- */

static uint16_t f32_to_f16_c(float v)
{
    uint32_t f;
    memcpy(&f, &v, sizeof f);
    uint32_t sign = (f >> 16) & 0x8000u;
    f &= 0x7fffffffu;
    uint16_t o;
    if (f > 0x7f800000u) o = (uint16_t)(0x7e00u | ((f >> 13) & 0x3ffu));      /* NaN: quiet */
    else if (f >= 0x47800000u) o = 0x7c00;                                    /* >= 65536: inf */
    else if (f < 0x38800000u) {
        /* below 2^-14: a half subnormal; adding 0.5 aligns the bits and rounds (RNE) */
        float x, magic = 0.5f;
        memcpy(&x, &f, sizeof x);
        x += magic;
        uint32_t r;
        memcpy(&r, &x, sizeof r);
        o = (uint16_t)(r - 0x3f000000u);
    } else {
        uint32_t odd = (f >> 13) & 1u;
        f += 0xc8000fffu + odd;           /* rebias the exponent (-112 << 23), round to even */
        o = (uint16_t)(f >> 13);
    }
    return (uint16_t)(o | sign);
}

AVX2 static void f32_to_f16_avx(const float *src, uint16_t *dst, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = f32_to_f16_c(src[i]);
}

void gemm_f32_to_f16(const float *src, uint16_t *dst, int n)
{
    if (gemm_vec_level()) f32_to_f16_avx(src, dst, n);
    else
        for (int i = 0; i < n; i++) dst[i] = f32_to_f16_c(src[i]);
}

/* ---- e^x for the softmax (gemm.h) ---- */

#define EXP_MAGIC 12582912.0f           /* 1.5 * 2^23: adding it rounds to an integer */
#define EXP_LOG2E 1.44269504088896341f
#define EXP_LN2HI 0.693145751953125f      /* ln 2 split: hi has 12 bits, so n * hi is exact */
#define EXP_LN2LO 1.42860682030941723e-6f

float gemm_exp(float x)
{
    if (x < -87.0f) return 0.0f;
    if (x > 88.0f) x = 88.0f;
    float t = fmaf(x, EXP_LOG2E, EXP_MAGIC);
    float n = t - EXP_MAGIC;
    float r = fmaf(n, -EXP_LN2HI, x);
    r = fmaf(n, -EXP_LN2LO, r);
    float p = fmaf(1.0f / 5040, r, 1.0f / 720);
    p = fmaf(p, r, 1.0f / 120);
    p = fmaf(p, r, 1.0f / 24);
    p = fmaf(p, r, 1.0f / 6);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    uint32_t tb, eb;
    memcpy(&tb, &t, sizeof tb);
    eb = (tb - 0x4b400000u + 127u) << 23;      /* the integer n from t's bits, biased */
    float sc;
    memcpy(&sc, &eb, sizeof sc);
    return p * sc;
}

AVX512 static void exp_sub_z(float *s, int n, float m)
{
    const __m512 mv = _mm512_set1_ps(m), lo = _mm512_set1_ps(-87.0f), hi = _mm512_set1_ps(88.0f);
    const __m512 magic = _mm512_set1_ps(EXP_MAGIC), l2e = _mm512_set1_ps(EXP_LOG2E);
    const __m512 nhi = _mm512_set1_ps(-EXP_LN2HI), nlo = _mm512_set1_ps(-EXP_LN2LO);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_sub_ps(_mm512_loadu_ps(s + i), mv);
        __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
        x = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ), x, hi);
        __m512 t = _mm512_fmadd_ps(x, l2e, magic);
        __m512 nn = _mm512_sub_ps(t, magic);
        __m512 r = _mm512_fmadd_ps(nn, nhi, x);
        r = _mm512_fmadd_ps(nn, nlo, r);
        __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.0f / 5040), r, _mm512_set1_ps(1.0f / 720));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
        __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_sub_epi32(_mm512_castps_si512(t),
                                                                        _mm512_set1_epi32(0x4b400000)),
                                                       _mm512_set1_epi32(127)), 23);
        __m512 y = _mm512_mul_ps(p, _mm512_castsi512_ps(e));
        _mm512_storeu_ps(s + i, _mm512_mask_blend_ps(under, y, _mm512_setzero_ps()));
    }
    for (; i < n; i++) s[i] = gemm_exp(s[i] - m);
}

AVX2 static void exp_sub_y(float *s, int n, float m)
{
    const __m256 mv = _mm256_set1_ps(m), lo = _mm256_set1_ps(-87.0f), hi = _mm256_set1_ps(88.0f);
    const __m256 magic = _mm256_set1_ps(EXP_MAGIC), l2e = _mm256_set1_ps(EXP_LOG2E);
    const __m256 nhi = _mm256_set1_ps(-EXP_LN2HI), nlo = _mm256_set1_ps(-EXP_LN2LO);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_sub_ps(_mm256_loadu_ps(s + i), mv);
        __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
        x = _mm256_blendv_ps(x, hi, _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
        __m256 t = _mm256_fmadd_ps(x, l2e, magic);
        __m256 nn = _mm256_sub_ps(t, magic);
        __m256 r = _mm256_fmadd_ps(nn, nhi, x);
        r = _mm256_fmadd_ps(nn, nlo, r);
        __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(1.0f / 5040), r, _mm256_set1_ps(1.0f / 720));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
        __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(_mm256_castps_si256(t),
                                                                        _mm256_set1_epi32(0x4b400000)),
                                                       _mm256_set1_epi32(127)), 23);
        __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
        _mm256_storeu_ps(s + i, _mm256_andnot_ps(under, y));
    }
    for (; i < n; i++) s[i] = gemm_exp(s[i] - m);
}

void gemm_exp_sub(float *s, int n, float m)
{
    int v = gemm_vec_level();
    if (v == 2) exp_sub_z(s, n, m);
    else if (v == 1) exp_sub_y(s, n, m);
    else
        for (int i = 0; i < n; i++) s[i] = gemm_exp(s[i] - m);
}

void gemm_rows(const gemm_ops *op, const uint8_t *w, size_t row_bytes, int K, int r0, int r1,
               const float *x, size_t ldx, int n, float *out, size_t ldo, float *scratch)
{
    gemm_rows_xq(op, w, row_bytes, K, r0, r1, x, ldx, n, out, ldo, scratch, NULL);
}
