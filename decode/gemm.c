/* gemm.c: the CPU backend's weight-row . activation products in the canonical order of
 * gemm.h, for one token (4 rows at a time, weights converted on the fly) and for frames
 * of many tokens (blocked: a row block's weights converted to float32 panels once per
 * GEMM_KC columns, then register tiles of rows x tokens; 8-lane partial sums kept per
 * output across panels, so the order along k is exactly the one-token order).
 *
 * The AVX-512 tile computes two outputs per zmm register (lanes 0-7 one row, 8-15 the
 * next): each half is the same 8-lane accumulator with the same FMA sequence as the AVX2
 * and scalar paths, so all three give the same bits. */
#include "decode/gemm.h"
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512dq")))

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
AVX_KERNELS(bf16, ld_bf16)
AVX_KERNELS(f16, ld_f16)
AVX_KERNELS(f32, ld_f32)

static const gemm_ops ops_c[3] = {
    {dot_bf16_c, dot4_bf16_c, cvt_bf16_c, 0}, {dot_f16_c, dot4_f16_c, cvt_f16_c, 0}, {dot_f32_c, dot4_f32_c, cvt_f32_c, 0}};
static const gemm_ops ops_avx[3] = {{dot_bf16_avx, dot4_bf16_avx, cvt_bf16_avx, 1},
                                    {dot_f16_avx, dot4_f16_avx, cvt_f16_avx, 1},
                                    {dot_f32_avx, dot4_f32_avx, cvt_f32_avx, 1}};
static const gemm_ops ops_avx512[3] = {{dot_bf16_avx, dot4_bf16_avx, cvt_bf16_avx, 2},
                                       {dot_f16_avx, dot4_f16_avx, cvt_f16_avx, 2},
                                       {dot_f32_avx, dot4_f32_avx, cvt_f32_avx, 2}};

int gemm_vec_level(void)
{
    static int level = -1;
    if (level < 0) {
        __builtin_cpu_init();
        int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                   __builtin_cpu_supports("f16c") && !getenv("PHI3_NO_AVX");
        int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
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

/* 8 rows (two panel groups) x T tokens, AVX-512: row pairs in zmm halves, 4T accumulators. */
AVX512 static inline __attribute__((always_inline)) void tile_z(const float *p0, const float *p1, int ks,
                                                                 const float *x, size_t ldx, float *acc,
                                                                 size_t ps, const int T)
{
    __m512 c[4][6];
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++)
#pragma GCC unroll 6
        for (int t = 0; t < T; t++) c[q][t] = _mm512_loadu_ps(acc + q * ps + t * 16);
    for (int s = 0; s < ks; s++) {
        __m512 w[4];
        w[0] = _mm512_loadu_ps(p0 + s * 32);
        w[1] = _mm512_loadu_ps(p0 + s * 32 + 16);
        w[2] = _mm512_loadu_ps(p1 + s * 32);
        w[3] = _mm512_loadu_ps(p1 + s * 32 + 16);
#pragma GCC unroll 6
        for (int t = 0; t < T; t++) {
            __m512 xv = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + t * ldx + s * 8));
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++) c[q][t] = _mm512_fmadd_ps(w[q], xv, c[q][t]);
        }
    }
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++)
#pragma GCC unroll 6
        for (int t = 0; t < T; t++) _mm512_storeu_ps(acc + q * ps + t * 16, c[q][t]);
}

AVX512 static void tiles_z(const float *panel, int groups, int ks, const float *x, size_t ldx, int n, float *acc,
                           size_t ps)
{
    /* tokens outer, row groups inner: a tile's 6 activation rows stay in L1 while the
     * row block's panel (also in L1) passes under them */
    int g2 = groups & ~1;
    for (int t = 0; t < n; t += 6) {
        int nt = n - t < 6 ? n - t : 6;
        for (int g = 0; g < g2; g += 2) {
            const float *p0 = panel + (size_t)g * GEMM_KC * 4, *p1 = p0 + (size_t)GEMM_KC * 4;
            const float *xt = x + t * ldx;
            float *a = acc + (size_t)2 * g * ps + t * 16;    /* pairs 2g .. 2g + 3 */
            switch (nt) {
            case 6: tile_z(p0, p1, ks, xt, ldx, a, ps, 6); break;
            case 5: tile_z(p0, p1, ks, xt, ldx, a, ps, 5); break;
            case 4: tile_z(p0, p1, ks, xt, ldx, a, ps, 4); break;
            case 3: tile_z(p0, p1, ks, xt, ldx, a, ps, 3); break;
            case 2: tile_z(p0, p1, ks, xt, ldx, a, ps, 2); break;
            default: tile_z(p0, p1, ks, xt, ldx, a, ps, 1); break;
            }
        }
    }
    if (g2 < groups) tiles_y(panel + (size_t)g2 * GEMM_KC * 4, groups - g2, ks, x, ldx, n, acc + (size_t)2 * g2 * ps, ps);
}

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
 * r < rows, t < n; 8 rows at a time: an 8x8 transpose puts lane j of 8 outputs in one
 * register, then the same tree ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)) runs
 * across outputs, stored as 8 consecutive floats of token t. acc has room (zeros) for
 * rows rounded up to 8. */
AVX2 static void reduce_avx(const float *acc, size_t ps, int rows, int n, float *out, size_t ldo)
{
    for (int r = 0; r < rows; r += 8)
        for (int t = 0; t < n; t++) {
            const float *a = ACC(acc, ps, r, t);      /* rows r, r + 1 at a, a + 8; next pair + ps */
            __m256 r0 = _mm256_loadu_ps(a), r1 = _mm256_loadu_ps(a + 8), r2 = _mm256_loadu_ps(a + ps);
            __m256 r3 = _mm256_loadu_ps(a + ps + 8), r4 = _mm256_loadu_ps(a + 2 * ps);
            __m256 r5 = _mm256_loadu_ps(a + 2 * ps + 8), r6 = _mm256_loadu_ps(a + 3 * ps);
            __m256 r7 = _mm256_loadu_ps(a + 3 * ps + 8);
            __m256 u0 = _mm256_unpacklo_ps(r0, r1), u1 = _mm256_unpackhi_ps(r0, r1);
            __m256 u2 = _mm256_unpacklo_ps(r2, r3), u3 = _mm256_unpackhi_ps(r2, r3);
            __m256 u4 = _mm256_unpacklo_ps(r4, r5), u5 = _mm256_unpackhi_ps(r4, r5);
            __m256 u6 = _mm256_unpacklo_ps(r6, r7), u7 = _mm256_unpackhi_ps(r6, r7);
            __m256 v0 = _mm256_shuffle_ps(u0, u2, 0x44), v1 = _mm256_shuffle_ps(u0, u2, 0xee);
            __m256 v2 = _mm256_shuffle_ps(u1, u3, 0x44), v3 = _mm256_shuffle_ps(u1, u3, 0xee);
            __m256 v4 = _mm256_shuffle_ps(u4, u6, 0x44), v5 = _mm256_shuffle_ps(u4, u6, 0xee);
            __m256 v6 = _mm256_shuffle_ps(u5, u7, 0x44), v7 = _mm256_shuffle_ps(u5, u7, 0xee);
            /* lane j of rows r..r+7: lanes 0-3 from the low halves, 4-7 from the high */
            __m256 l0 = _mm256_permute2f128_ps(v0, v4, 0x20), l1 = _mm256_permute2f128_ps(v1, v5, 0x20);
            __m256 l2 = _mm256_permute2f128_ps(v2, v6, 0x20), l3 = _mm256_permute2f128_ps(v3, v7, 0x20);
            __m256 l4 = _mm256_permute2f128_ps(v0, v4, 0x31), l5 = _mm256_permute2f128_ps(v1, v5, 0x31);
            __m256 l6 = _mm256_permute2f128_ps(v2, v6, 0x31), l7 = _mm256_permute2f128_ps(v3, v7, 0x31);
            __m256 sum = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(l0, l1), _mm256_add_ps(l2, l3)),
                                       _mm256_add_ps(_mm256_add_ps(l4, l5), _mm256_add_ps(l6, l7)));
            float *o = out + (size_t)t * ldo + r;
            if (rows - r >= 8) _mm256_storeu_ps(o, sum);
            else {
                float tmp[8];
                _mm256_storeu_ps(tmp, sum);
                memcpy(o, tmp, (size_t)(rows - r) * sizeof(float));
            }
        }
}

static void gemm_block(const gemm_ops *op, const uint8_t *w, size_t row_bytes, int K, int rows,
                       const float *x, size_t ldx, int n, float *out, size_t ldo, float *scratch)
{
    float *panel = scratch, *acc = scratch + PANEL_FLOATS, *tail = acc + ACC_FLOATS;
    int K8 = K & ~7, groups = (rows + 3) / 4;
    size_t ps = (size_t)n * 16;                  /* acc floats per row pair */
    memset(acc, 0, (size_t)((rows + 7) & ~7) / 2 * ps * sizeof(float));   /* padded rows too */
    for (int kb = 0; kb < K8; kb += GEMM_KC) {
        int kc = K8 - kb < GEMM_KC ? K8 - kb : GEMM_KC, ks = kc / 8;
        for (int r = 0; r < groups * 4; r++) {
            float *dst = panel + (size_t)(r / 4) * GEMM_KC * 4 + (r % 4) * 8;
            if (r >= rows) {
                for (int s = 0; s < ks; s++) memset(dst + s * 32, 0, 8 * sizeof(float));
                continue;
            }
            op->cvt(w + (size_t)r * row_bytes, kb, kc, tail);
            for (int s = 0; s < ks; s++) memcpy(dst + s * 32, tail + s * 8, 8 * sizeof(float));
        }
        const float *xb = x + kb;
        if (op->vec == 2) tiles_z(panel, groups, ks, xb, ldx, n, acc, ps);
        else if (op->vec == 1) tiles_y(panel, groups, ks, xb, ldx, n, acc, ps);
        else tiles_c(panel, groups, ks, xb, ldx, n, acc, ps);
    }
    if (op->vec) reduce_avx(acc, ps, rows, n, out, ldo);
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

void gemm_rows(const gemm_ops *op, const uint8_t *w, size_t row_bytes, int K, int r0, int r1,
               const float *x, size_t ldx, int n, float *out, size_t ldo, float *scratch)
{
    if (n < 4) {
        /* one to three tokens: no reuse worth a panel; 4 rows per pass over the weights */
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
            gemm_block(op, w + (size_t)rb * row_bytes, row_bytes, K, rows, x + (size_t)t * ldx, ldx, nt,
                       out + (size_t)t * ldo + rb, ldo, scratch);
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
