/* quant.c: ggml's block formats: sizes, exact reference dequantization (ggml's float
 * expressions, element by element) and our own quantizers. Layouts in quant.h.
 *
 * Float order matters: the CPU kernels (decode/qdot.c) reproduce these values bit for
 * bit, so every expression here is written as the separate IEEE operations ggml
 * performs (this file is compiled with -std=c11, where GCC does not contract a*b-c
 * into an FMA). */
#include "embed/quant.h"
#include <emmintrin.h>
#include <math.h>
#include <string.h>

/* ---- sizes ---- */

int quant_is_block(st_dtype d)
{
    return d >= ST_Q8_0 && d < ST_NDTYPE;
}

int quant_block_size(st_dtype d)
{
    switch (d) {
    case ST_Q8_0: return QK8_0;
    case ST_Q4_0: return QK4_0;
    case ST_Q4_K: case ST_Q5_K: case ST_Q6_K: return QK_K;
    default: return d < ST_N_SAFETENSORS ? 1 : 0;
    }
}

size_t quant_block_bytes(st_dtype d)
{
    switch (d) {
    case ST_Q8_0: return Q8_0_BYTES;
    case ST_Q4_0: return Q4_0_BYTES;
    case ST_Q4_K: return Q4_K_BYTES;
    case ST_Q5_K: return Q5_K_BYTES;
    case ST_Q6_K: return Q6_K_BYTES;
    default: return d < ST_N_SAFETENSORS ? st_dtype_size(d) : 0;
    }
}

size_t quant_row_bytes(st_dtype d, int64_t cols)
{
    int bs = quant_block_size(d);
    size_t bb = quant_block_bytes(d), r;
    if (bs <= 0 || bb == 0 || cols < 0 || cols % bs) return 0;
    if (__builtin_mul_overflow((uint64_t)(cols / bs), (uint64_t)bb, &r)) return 0;
    return r;
}

/* ---- half precision ---- */

uint16_t quant_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00 | (uint16_t)((a >> 13) & 0x3ff);   /* NaN */
    if (a >= 0x477ff000u) return sign | 0x7c00;      /* >= 65520 rounds to inf */
    if (a >= 0x38800000u) {                          /* normal half: rebias, round */
        uint32_t m = a - 0x38000000u;
        return sign | (uint16_t)((m + 0xfffu + ((m >> 13) & 1)) >> 13);
    }
    /* subnormal (or zero): units of 2^-24, nearest even (the default rounding mode) */
    return sign | (uint16_t)lrintf(fabsf(f) * 0x1p24f);
}

uint16_t quant_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

static float half(const uint8_t *p)
{
    return f16_to_f32((uint16_t)(p[0] | p[1] << 8));
}

static void put_half(uint8_t *p, uint16_t h)
{
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

/* A scale as f16, saturated at the largest finite half so huge inputs stay finite. */
static uint16_t scale_half(float f)
{
    uint16_t h = quant_f32_to_f16(f);
    return (h & 0x7fff) >= 0x7c00 ? (uint16_t)((h & 0x8000) | 0x7bff) : h;
}

/* ---- K-quant 6-bit scales: 8 (scale, min) pairs in 12 bytes ---- */

static void k_scale_min(const uint8_t *s, int j, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
        *m = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

static void k_pack_scales(uint8_t *s, const uint8_t *sc, const uint8_t *m)
{
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        s[j + 4] = (uint8_t)((m[j] & 63) | ((m[j + 4] >> 4) << 6));
        s[j + 8] = (uint8_t)((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
    }
}

/* ---- dequantization of whole blocks (ggml's expressions) ---- */

static void deq_q8_0(const uint8_t *b, float *y)
{
    float d = half(b);
    const int8_t *q = (const int8_t *)(b + 2);
    for (int i = 0; i < 32; i++) y[i] = (float)q[i] * d;
}

static void deq_q4_0(const uint8_t *b, float *y)
{
    float d = half(b);
    const uint8_t *q = b + 2;
    for (int i = 0; i < 16; i++) {
        y[i] = (float)((q[i] & 0xF) - 8) * d;
        y[i + 16] = (float)((q[i] >> 4) - 8) * d;
    }
}

/* Q4_K and Q5_K (qh NULL for Q4_K): sub-block pair c uses qs[32c..32c+32) (low nibbles:
 * sub-block 2c, high: 2c+1) and qh bits 2c, 2c+1. */
static void deq_k45(const uint8_t *b, const uint8_t *qh, const uint8_t *qs, float *y)
{
    float d = half(b), dmin = half(b + 2);
    const uint8_t *s = b + 4;
    for (int c = 0; c < 4; c++) {
        uint8_t sc, m;
        k_scale_min(s, 2 * c, &sc, &m);
        float d1 = d * (float)sc, m1 = dmin * (float)m;
        k_scale_min(s, 2 * c + 1, &sc, &m);
        float d2 = d * (float)sc, m2 = dmin * (float)m;
        const uint8_t *q = qs + 32 * c;
        for (int l = 0; l < 32; l++) {
            int lo = q[l] & 0xF, hi = q[l] >> 4;
            if (qh) {
                lo += (qh[l] >> (2 * c) & 1) << 4;
                hi += (qh[l] >> (2 * c + 1) & 1) << 4;
            }
            y[64 * c + l] = d1 * (float)lo - m1;
            y[64 * c + 32 + l] = d2 * (float)hi - m2;
        }
    }
}

static void deq_q6_k(const uint8_t *b, float *y)
{
    float d = half(b + 208);
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
        const int8_t *sc = (const int8_t *)(b + 192) + 8 * h;
        float *o = y + 128 * h;
        for (int l = 0; l < 32; l++) {
            int is = l / 16;
            int q1 = ((ql[l] & 0xF) | ((qh[l] >> 0 & 3) << 4)) - 32;
            int q2 = ((ql[l + 32] & 0xF) | ((qh[l] >> 2 & 3) << 4)) - 32;
            int q3 = ((ql[l] >> 4) | ((qh[l] >> 4 & 3) << 4)) - 32;
            int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6 & 3) << 4)) - 32;
            o[l] = d * (float)sc[is] * (float)q1;
            o[l + 32] = d * (float)sc[is + 2] * (float)q2;
            o[l + 64] = d * (float)sc[is + 4] * (float)q3;
            o[l + 96] = d * (float)sc[is + 6] * (float)q4;
        }
    }
}

static void deq_block(st_dtype d, const uint8_t *b, float *y)
{
    switch (d) {
    case ST_Q8_0: deq_q8_0(b, y); break;
    case ST_Q4_0: deq_q4_0(b, y); break;
    case ST_Q4_K: deq_k45(b, NULL, b + 16, y); break;
    case ST_Q5_K: deq_k45(b, b + 16, b + 48, y); break;
    case ST_Q6_K: deq_q6_k(b, y); break;
    default: break;
    }
}

void quant_dequant_row(st_dtype d, const void *row, float *dst, int64_t k0, int64_t count)
{
    if (!quant_is_block(d)) {
        model_to_f32(d, (const uint8_t *)row + (size_t)k0 * st_dtype_size(d), dst, (size_t)count);
        return;
    }
    int bs = quant_block_size(d);
    size_t bb = quant_block_bytes(d);
    const uint8_t *b = (const uint8_t *)row + (size_t)(k0 / bs) * bb;
    for (int64_t i = 0; i < count; i += bs, b += bb) deq_block(d, b, dst + i);
}

int64_t quant_bad_blocks(st_dtype d, const void *row, int64_t cols)
{
    if (!quant_is_block(d)) return 0;
    int bs = quant_block_size(d);
    size_t bb = quant_block_bytes(d);
    /* where the f16 scales sit in a block, and how many (d, or d and dmin) */
    size_t off = d == ST_Q6_K ? 208 : 0;
    int n = d == ST_Q4_K || d == ST_Q5_K ? 2 : 1;
    int64_t bad = 0;
    const uint8_t *b = row;
    for (int64_t i = 0; i < cols / bs; i++, b += bb)
        for (int k = 0; k < n; k++)
            if ((b[off + 2 * k + 1] & 0x7c) == 0x7c) {
                bad++;
                break;
            }
    return bad;
}

/* ---- quantizers (our own) ---- */

/* v clamped to [lo, hi] and truncated to int, NaN giving z: the one float-to-int
 * conversion of the quantizers, defined for every input (a NaN or inf weight makes a
 * valid block, not undefined behaviour). */
static int fclampi(float v, int lo, int hi, int z)
{
    if (v != v) return z;
    return v <= (float)lo ? lo : v >= (float)hi ? hi : (int)v;
}

static void quant_q8_0(const float *x, uint8_t *b)
{
    float amax = 0;
    for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[i]));
    float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
    put_half(b, scale_half(d));
    for (int i = 0; i < 32; i++) b[2 + i] = (uint8_t)(int8_t)fclampi(roundf(x[i] * id), -127, 127, 0);
}

/* The value of largest magnitude maps to -8 (the end of the range with more room). */
static void quant_q4_0(const float *x, uint8_t *b)
{
    float amax = 0, vmax = 0;
    for (int i = 0; i < 32; i++)
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            vmax = x[i];
        }
    float d = vmax / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
    put_half(b, scale_half(d));
    for (int i = 0; i < 16; i++) {
        int lo = fclampi(x[i] * id + 8.5f, 0, 15, 8), hi = fclampi(x[i + 16] * id + 8.5f, 0, 15, 8);
        b[2 + i] = (uint8_t)(lo | hi << 4);
    }
}

/* Nearest integer of v clamped to [0, hi] (round half up; NaN: 0). */
static inline int qround(float v, float hi)
{
    return fclampi(v + 0.5f, 0, (int)hi, 0);
}

/* Over q_i = qround((x_i - off) * is, hi), i < n (a multiple of 4): the sums of q, q^2
 * and q x, with SSE2 (baseline x86-64) in 4 lanes: the scale searches below run this
 * a dozen times per weight. */
static void qsums(const float *x, int n, float off, float is, float hi, float *sq, float *sqq, float *sqx)
{
    __m128 o = _mm_set1_ps(off), s = _mm_set1_ps(is), h = _mm_set1_ps(0.5f), z = _mm_setzero_ps();
    __m128 top = _mm_set1_ps(hi + 0.25f), a = z, b = z, c = z;
    for (int i = 0; i < n; i += 4) {
        __m128 v = _mm_loadu_ps(x + i);
        __m128 t = _mm_add_ps(_mm_mul_ps(_mm_sub_ps(v, o), s), h);
        __m128 q = _mm_cvtepi32_ps(_mm_cvttps_epi32(_mm_min_ps(_mm_max_ps(t, z), top)));
        a = _mm_add_ps(a, q);
        b = _mm_add_ps(b, _mm_mul_ps(q, q));
        c = _mm_add_ps(c, _mm_mul_ps(q, v));
    }
    float l[3][4];
    _mm_storeu_ps(l[0], a);
    _mm_storeu_ps(l[1], b);
    _mm_storeu_ps(l[2], c);
    *sq = (l[0][0] + l[0][1]) + (l[0][2] + l[0][3]);
    *sqq = (l[1][0] + l[1][1]) + (l[1][2] + l[1][3]);
    *sqx = (l[2][0] + l[2][1]) + (l[2][2] + l[2][3]);
}

/* Fit x[0..n) ~ s * q - mn with q in 0..nmax, s >= 0, mn >= 0: for a range of scales
 * around span / nmax, assign q, refit (s, mn) by least squares on that assignment, and
 * keep the fit with the least squared error (computed from the sums). */
static void fit_affine(const float *x, int n, int nmax, float *s_out, float *mn_out)
{
    float lo = x[0], hi = x[0], sx = 0, sxx = 0;
    for (int i = 0; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
        sx += x[i];
        sxx += x[i] * x[i];
    }
    if (lo > 0) lo = 0;
    *s_out = 0;
    *mn_out = -lo;
    if (hi <= lo) return;
    float best = INFINITY, fn = (float)n, top = (float)nmax;
    for (int t = -4; t <= 10; t++) {
        float sq, sqq, sqx;
        qsums(x, n, lo, (top + 0.1f * (float)t) / (hi - lo), top, &sq, &sqq, &sqx);
        float det = fn * sqq - sq * sq;
        if (!(det > 0)) continue;
        float ns = (fn * sqx - sq * sx) / det, nmn = (ns * sq - sx) / fn;
        if (nmn < 0) {                 /* the min must be <= 0: refit the scale alone */
            nmn = 0;
            ns = sqx / sqq;
        }
        if (!(ns > 0)) continue;
        /* sum (ns q - nmn - x)^2 expanded */
        float err = ns * ns * sqq + fn * nmn * nmn + sxx - 2 * ns * nmn * sq - 2 * ns * sqx + 2 * nmn * sx;
        if (err < best) {
            best = err;
            *s_out = ns;
            *mn_out = nmn;
        }
    }
}

/* Q4_K (nmax 15, qh NULL) and Q5_K (nmax 31). */
static void quant_k45(const float *x, uint8_t *b, int nmax, uint8_t *qh, uint8_t *qs)
{
    float s[8], mn[8], smax = 0, mmax = 0;
    for (int j = 0; j < 8; j++) {
        fit_affine(x + 32 * j, 32, nmax, &s[j], &mn[j]);
        smax = fmaxf(smax, s[j]);
        mmax = fmaxf(mmax, mn[j]);
    }
    uint16_t dh = scale_half(smax / 63.0f), mh = scale_half(mmax / 63.0f);
    put_half(b, dh);
    put_half(b + 2, mh);
    float d = f16_to_f32(dh), dmin = f16_to_f32(mh);
    uint8_t sc[8], m[8];
    for (int j = 0; j < 8; j++) {
        sc[j] = (uint8_t)(d > 0 ? fclampi(rintf(s[j] / d), 0, 63, 0) : 0);
        m[j] = (uint8_t)(dmin > 0 ? fclampi(rintf(mn[j] / dmin), 0, 63, 0) : 0);
    }
    k_pack_scales(b + 4, sc, m);
    if (qh) memset(qh, 0, 32);
    for (int j = 0; j < 8; j++) {
        float ds = d * (float)sc[j], dm = dmin * (float)m[j];
        int c = j / 2, high = j & 1;
        for (int l = 0; l < 32; l++) {
            int q = ds > 0 ? qround((x[32 * j + l] + dm) / ds, (float)nmax) : 0;
            uint8_t *p = qs + 32 * c + l;
            if (high) *p = (uint8_t)((*p & 0xF) | (q & 0xF) << 4);
            else *p = (uint8_t)(q & 0xF);
            if (qh && q > 15) qh[l] |= (uint8_t)(1 << (2 * c + high));
        }
    }
}

/* Q6_K: per sub-block of 16 a signed scale s (x ~ s * q, q in -32..31): for scales
 * around max / -32, assign q, take the least-squares s for that assignment, keep the
 * one that explains most (largest sxq^2 / sqq); then 8-bit sub-scales. */
static void quant_q6_k(const float *x, uint8_t *b)
{
    float s[16], smax = 0;
    for (int j = 0; j < 16; j++) {
        const float *v = x + 16 * j;
        float amax = 0, vmax = 0;
        for (int i = 0; i < 16; i++)
            if (fabsf(v[i]) > amax) {
                amax = fabsf(v[i]);
                vmax = v[i];
            }
        s[j] = 0;
        if (amax == 0) continue;
        float best = -1;
        for (int t = -6; t <= 6; t++) {
            /* q + 32 = qround((v - (-32/is)) * is, 63): shift the sums back by 32 */
            float is = (-32.0f + 0.25f * (float)t) / vmax, sq, sqq, sxq, sx = 0;
            qsums(v, 16, -32.0f / is, is, 63.0f, &sq, &sqq, &sxq);
            for (int i = 0; i < 16; i++) sx += v[i];
            sxq -= 32 * sx;
            sqq -= 64 * sq - 16 * 1024;
            if (sqq > 0 && sxq * sxq / sqq > best) {
                best = sxq * sxq / sqq;
                s[j] = sxq / sqq;
            }
        }
        smax = fmaxf(smax, fabsf(s[j]));
    }
    memset(b, 0, Q6_K_BYTES);
    uint16_t dh = scale_half(smax / 127.0f);
    put_half(b + 208, dh);
    float d = f16_to_f32(dh);
    int8_t *scs = (int8_t *)(b + 192);
    for (int j = 0; j < 16; j++) scs[j] = (int8_t)(d > 0 ? fclampi(rintf(s[j] / d), -127, 127, 0) : 0);
    for (int e = 0; e < 256; e++) {
        float ds = d * (float)scs[e / 16];
        int q = ds != 0 ? qround(x[e] / ds + 32.0f, 63.0f) : 32;
        int h = e / 128, r = e % 128, l = r % 32, quarter = r / 32;
        uint8_t *ql = b + 64 * h + l + (quarter & 1) * 32, *qhp = b + 128 + 32 * h + l;
        *ql |= (uint8_t)((q & 0xF) << (quarter >= 2 ? 4 : 0));
        *qhp |= (uint8_t)((q >> 4) << (2 * quarter));
    }
}

int quant_quantize_row(st_dtype d, const float *src, void *dst, int64_t cols)
{
    uint8_t *o = dst;
    switch (d) {
    case ST_F32: memcpy(dst, src, (size_t)cols * sizeof(float)); return 0;
    case ST_F16:
        for (int64_t i = 0; i < cols; i++) put_half(o + 2 * i, quant_f32_to_f16(src[i]));
        return 0;
    case ST_BF16:
        for (int64_t i = 0; i < cols; i++) put_half(o + 2 * i, quant_f32_to_bf16(src[i]));
        return 0;
    default: break;
    }
    if (!quant_is_block(d) || quant_row_bytes(d, cols) == 0) return cols == 0 ? 0 : -1;
    int bs = quant_block_size(d);
    size_t bb = quant_block_bytes(d);
    for (int64_t i = 0; i < cols / bs; i++, src += bs, o += bb) {
        switch (d) {
        case ST_Q8_0: quant_q8_0(src, o); break;
        case ST_Q4_0: quant_q4_0(src, o); break;
        case ST_Q4_K: quant_k45(src, o, 15, NULL, o + 16); break;
        case ST_Q5_K: quant_k45(src, o, 31, o + 16, o + 48); break;
        case ST_Q6_K: quant_q6_k(src, o); break;
        default: return -1;
        }
    }
    return 0;
}

/* ---- ggml type numbers ---- */

static const char *const ggml_names[] = {
    "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
    "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M",
    "BF16", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8",
    "IQ4_NL_8_8", "MXFP4",
};

static const struct { uint32_t ggml; st_dtype d; } ggml_map[] = {
    {0, ST_F32}, {1, ST_F16}, {2, ST_Q4_0}, {8, ST_Q8_0}, {12, ST_Q4_K}, {13, ST_Q5_K},
    {14, ST_Q6_K}, {24, ST_I8}, {25, ST_I16}, {26, ST_I32}, {27, ST_I64}, {28, ST_F64},
    {30, ST_BF16},
};

st_dtype quant_from_ggml(uint32_t t)
{
    for (size_t i = 0; i < sizeof ggml_map / sizeof *ggml_map; i++)
        if (ggml_map[i].ggml == t) return ggml_map[i].d;
    return ST_NDTYPE;
}

int quant_to_ggml(st_dtype d)
{
    for (size_t i = 0; i < sizeof ggml_map / sizeof *ggml_map; i++)
        if (ggml_map[i].d == d) return (int)ggml_map[i].ggml;
    return -1;
}

const char *quant_ggml_name(uint32_t t)
{
    return t < sizeof ggml_names / sizeof *ggml_names ? ggml_names[t] : "?";
}
