/* quant_test.c: the ggml block formats (embed/quant.c) and their CPU dot kernels
 * (decode/qdot.c). References written here from the format description, not from the
 * code under test: hand-built blocks with known values, f16 rounding checked against
 * exact midpoints, error bounds of quantize -> dequantize derived from the step sizes,
 * and every kernel compared bit for bit with a plain fmaf loop in the canonical order
 * over the dequantized row. */
#include "decode/backend.h"
#include "decode/qdot.h"
#include "embed/model.h"
#include "embed/quant.h"
#include "tests/unit/tap.h"
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const st_dtype types[] = {ST_Q8_0, ST_Q4_0, ST_Q4_K, ST_Q5_K, ST_Q6_K};
#define NT (int)(sizeof types / sizeof *types)

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}
static float unif(void) { return (float)((rnd() >> 8) * 0x1p-24 * 2.0 - 1.0); }
static float gauss(void)
{
    double u = ((rnd() >> 8) + 0.5) * 0x1p-24, v = ((rnd() >> 8) + 0.5) * 0x1p-24;
    return (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
}

static int same_bits(float a, float b)
{
    uint32_t x, y;
    memcpy(&x, &a, 4);
    memcpy(&y, &b, 4);
    return x == y || (isnan(a) && isnan(b));
}

/* The canonical order (qdot.h), on float weights. */
static float canon_dot(const float *w, const float *x, int n)
{
    float acc[8] = {0};
    int k = 0;
    for (; k + 8 <= n; k += 8)
        for (int j = 0; j < 8; j++) acc[j] = fmaf(w[k + j], x[k + j], acc[j]);
    float r = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; k < n; k++) r = fmaf(w[k], x[k], r);
    return r;
}

static void put16(uint8_t *p, uint16_t h)
{
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

static void sizes(void)
{
    ok(quant_row_bytes(ST_Q8_0, 3072) == 96 * 34, "Q8_0 row of 3072: 96 blocks of 34 bytes");
    ok(quant_row_bytes(ST_Q4_0, 64) == 36, "Q4_0 row of 64: 36 bytes");
    ok(quant_row_bytes(ST_Q4_K, 3072) == 12 * 144, "Q4_K row of 3072: 12 blocks of 144 bytes");
    ok(quant_row_bytes(ST_Q5_K, 8192) == 32 * 176, "Q5_K row of 8192: 32 blocks of 176 bytes");
    ok(quant_row_bytes(ST_Q6_K, 256) == 210, "Q6_K row of 256: 210 bytes");
    ok(quant_row_bytes(ST_BF16, 3) == 6 && quant_row_bytes(ST_F32, 5) == 20, "element types: cols x size");
    ok(quant_row_bytes(ST_Q4_K, 3000) == 0 && quant_row_bytes(ST_Q8_0, 33) == 0,
       "a row that is not whole blocks has no size");
    ok(quant_row_bytes(ST_Q8_0, -32) == 0 && quant_row_bytes(ST_NDTYPE, 32) == 0, "negative cols, bad dtype: 0");
    ok(quant_row_bytes(ST_F64, INT64_MAX) == 0, "overflowing row size: 0");
    ok(quant_block_size(ST_Q6_K) == 256 && quant_block_size(ST_Q4_0) == 32 && quant_block_size(ST_F16) == 1,
       "block sizes");
    ok(st_dtype_size(ST_Q4_K) == 0 && !strcmp(st_dtype_name(ST_Q5_K), "Q5_K") && !strcmp(st_dtype_name(ST_Q8_0), "Q8_0"),
       "block types have names and no element size");
    ok(quant_from_ggml(12) == ST_Q4_K && quant_from_ggml(14) == ST_Q6_K && quant_from_ggml(8) == ST_Q8_0 &&
           quant_from_ggml(2) == ST_Q4_0 && quant_from_ggml(13) == ST_Q5_K && quant_from_ggml(30) == ST_BF16 &&
           quant_from_ggml(1) == ST_F16 && quant_from_ggml(0) == ST_F32,
       "ggml type numbers map to dtypes");
    ok(quant_from_ggml(3) == ST_NDTYPE && quant_from_ggml(16) == ST_NDTYPE && quant_from_ggml(1000) == ST_NDTYPE,
       "unsupported ggml types (Q4_1, IQ2_XXS, 1000) map to nothing");
    ok(!strcmp(quant_ggml_name(16), "IQ2_XXS") && !strcmp(quant_ggml_name(11), "Q3_K") &&
           !strcmp(quant_ggml_name(12345), "?"),
       "ggml type names for messages");
    ok(quant_to_ggml(ST_Q6_K) == 14 && quant_to_ggml(ST_BOOL) == -1, "dtypes map back to ggml numbers");
}

/* A safetensors header naming a block dtype is refused (safetensors has none; a block
 * type has no element size, which the size check would divide by). */
static void safetensors_refuses_blocks(void)
{
    const char *hdr = "{\"w\":{\"dtype\":\"Q8_0\",\"shape\":[32],\"data_offsets\":[0,34]}}";
    size_t hl = strlen(hdr), size = 8 + hl + 34;
    uint8_t *buf = calloc(1, size);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(hl >> (8 * i));
    memcpy(buf + 8, hdr, hl);
    st_tensor *t = NULL;
    int n = 0;
    char err[256] = "";
    int rc = st_parse(buf, size, &t, &n, err, sizeof err);
    ok(rc == -1 && strstr(err, "unknown dtype Q8_0"), "safetensors dtype Q8_0 is unknown (%s)", err);
    if (rc == 0) st_tensors_free(t, n);
    free(buf);
}

static void half_rounding(void)
{
    int bad = 0, badmid = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = f16_to_f32((uint16_t)h);
        if (isnan(f)) {
            if (!isnan(f16_to_f32(quant_f32_to_f16(f)))) bad++;
            continue;
        }
        if (quant_f32_to_f16(f) != h) bad++;
        /* the exact midpoint to the next half up in magnitude rounds to the even one;
         * a hair above it rounds up */
        if ((h & 0x7fff) < 0x7bff) {
            float g = f16_to_f32((uint16_t)(h + 1));
            float mid = (f + g) / 2;                  /* exact: both are f32-representable halves */
            uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
            if (quant_f32_to_f16(mid) != even) badmid++;
            if (quant_f32_to_f16(nextafterf(mid, 2 * g)) != h + 1) badmid++;
        }
    }
    ok(!bad, "f32 -> f16 gives back every half (%d wrong)", bad);
    ok(!badmid, "f32 -> f16 rounds midpoints to even and above-midpoints up (%d wrong)", badmid);
    ok(quant_f32_to_f16(65519.0f) == 0x7bff && quant_f32_to_f16(65520.0f) == 0x7c00 &&
           quant_f32_to_f16(-1e10f) == 0xfc00 && quant_f32_to_f16(1e-10f) == 0,
       "f16 overflow to inf from 65520, underflow to 0");
    ok(quant_f32_to_bf16(1.0f) == 0x3f80 && quant_f32_to_bf16(1.00390625f) == 0x3f80 &&
           quant_f32_to_bf16(1.01171875f) == 0x3f82 && quant_f32_to_bf16(-2.0f) == 0xc000,
       "f32 -> bf16 rounds to nearest even");
}

/* ---- hand-built blocks: the values the format description gives ---- */

static void known_blocks(void)
{
    uint8_t b[256];
    float y[256];
    int bad = 0;

    /* Q8_0: d = 0.5, q[i] = i*8 - 128 */
    put16(b, 0x3800);
    for (int i = 0; i < 32; i++) b[2 + i] = (uint8_t)(i * 8 - 128);
    quant_dequant_row(ST_Q8_0, b, y, 0, 32);
    for (int i = 0; i < 32; i++) bad += y[i] != (float)(i * 8 - 128) * 0.5f;
    ok(!bad, "Q8_0: w = q * d");

    /* Q4_0: d = -2; byte i holds element i (low nibble) and element 16+i (high) */
    bad = 0;
    put16(b, 0xc000);
    for (int i = 0; i < 16; i++) b[2 + i] = (uint8_t)(i | (15 - i) << 4);
    quant_dequant_row(ST_Q4_0, b, y, 0, 32);
    for (int i = 0; i < 16; i++) bad += y[i] != (float)(i - 8) * -2.0f || y[16 + i] != (float)(7 - i) * -2.0f;
    ok(!bad, "Q4_0: w = (q - 8) * d, low nibbles first");

    /* Q4_K / Q5_K: pick sc[8], m[8] (6 bits) and q[256]; pack them bit by bit as the
     * format says; expect (d*sc)*q - (dmin*m). */
    for (int five = 0; five < 2; five++) {
        st_dtype dt = five ? ST_Q5_K : ST_Q4_K;
        int sc[8], m[8], q[256];
        memset(b, 0, sizeof b);
        put16(b, 0x3c00 + 0x0155);      /* d    = 1.333... */
        put16(b + 2, 0x2e66);           /* dmin = 0.0999.. */
        for (int j = 0; j < 8; j++) {
            sc[j] = (int)(rnd() % 64);
            m[j] = (int)(rnd() % 64);
        }
        sc[5] = 63;
        m[6] = 63;
        for (int j = 0; j < 8; j++) {
            uint8_t *s = b + 4;
            if (j < 4) {
                s[j] |= (uint8_t)sc[j];
                s[j + 4] |= (uint8_t)m[j];
            } else {
                s[j + 4] |= (uint8_t)((sc[j] & 15) | (m[j] & 15) << 4);
                s[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
                s[j] |= (uint8_t)((m[j] >> 4) << 6);
            }
        }
        uint8_t *qh = b + 16, *qs = b + (five ? 48 : 16);
        for (int e = 0; e < 256; e++) {
            q[e] = (int)(rnd() % (five ? 32 : 16));
            int chunk = e / 64, hi = (e % 64) >= 32, l = e % 32;
            qs[32 * chunk + l] |= (uint8_t)((q[e] & 15) << (hi ? 4 : 0));
            if (five && q[e] >= 16) qh[l] |= (uint8_t)(1 << (2 * chunk + hi));
        }
        quant_dequant_row(dt, b, y, 0, 256);
        float d = f16_to_f32(0x3d55), dmin = f16_to_f32(0x2e66);
        bad = 0;
        for (int e = 0; e < 256; e++) {
            float ds = d * (float)sc[e / 32], dm = dmin * (float)m[e / 32];
            volatile float prod = ds * (float)q[e];
            bad += !same_bits(y[e], prod - dm);
        }
        ok(!bad, "%s: w = (d*sc)*q - (dmin*m) with 6-bit scales packed as specified (%d wrong)",
           five ? "Q5_K" : "Q4_K", bad);
    }

    /* Q6_K: ql[128] qh[64] int8 sc[16] f16 d; element e of half h: sub-block e/16 */
    {
        int sc[16], q[256];
        memset(b, 0, sizeof b);
        put16(b + 208, 0x1c00);         /* d = 2^-8 */
        for (int j = 0; j < 16; j++) sc[j] = (int)(rnd() % 256) - 128;
        sc[3] = -128;
        sc[9] = 127;
        for (int j = 0; j < 16; j++) b[192 + j] = (uint8_t)(int8_t)sc[j];
        for (int e = 0; e < 256; e++) {
            q[e] = (int)(rnd() % 64);
            int h = e / 128, r = e % 128, l = r % 32, qt = r / 32;
            b[64 * h + l + 32 * (qt & 1)] |= (uint8_t)((q[e] & 15) << (qt >= 2 ? 4 : 0));
            b[128 + 32 * h + l] |= (uint8_t)((q[e] >> 4) << (2 * qt));
        }
        quant_dequant_row(ST_Q6_K, b, y, 0, 256);
        float d = 0x1p-8f;
        bad = 0;
        for (int e = 0; e < 256; e++) bad += !same_bits(y[e], d * (float)sc[e / 16] * (float)(q[e] - 32));
        ok(!bad, "Q6_K: w = (d*sc)*(q - 32), 6-bit q split 4 + 2 as specified (%d wrong)", bad);
    }

    /* a block-aligned range of a row */
    {
        uint8_t row[3 * Q4_K_BYTES];
        float all[768], part[256];
        for (size_t i = 0; i < sizeof row; i++) row[i] = (uint8_t)rnd();
        for (int k = 0; k < 3; k++) put16(row + k * Q4_K_BYTES, 0x3c00), put16(row + k * Q4_K_BYTES + 2, 0x3800);
        quant_dequant_row(ST_Q4_K, row, all, 0, 768);
        quant_dequant_row(ST_Q4_K, row, part, 512, 256);
        ok(!memcmp(all + 512, part, sizeof part), "dequantizing blocks k0.. of a row = that slice of the row");
    }

    /* non-finite scales are counted */
    {
        uint8_t row[2 * Q4_K_BYTES] = {0};
        put16(row + Q4_K_BYTES + 2, 0x7c00);
        ok(quant_bad_blocks(ST_Q4_K, row, 512) == 1, "a Q4_K block with an infinite dmin is bad");
        uint8_t r6[Q6_K_BYTES] = {0};
        put16(r6 + 208, 0xfe00);
        ok(quant_bad_blocks(ST_Q6_K, r6, 256) == 1 && quant_bad_blocks(ST_Q8_0, row, 32) == 0,
           "a Q6_K block with a NaN d is bad; a zero block is not");
    }
}

/* ---- quantize -> dequantize ---- */

/* RMS error bound relative to RMS(x) for uniform [-1,1) inputs, from the step size:
 * rounding error is ~ step/sqrt(12) with step = span / levels (Q8_0: 2/254 of the max;
 * Q4_0: 1/8 of the max; Q4_K: span/15 per 32; Q5_K: span/31; Q6_K: max/32 per 16),
 * with headroom for the 6- or 8-bit sub-scales. */
static void roundtrip(void)
{
    static const double bound_u[] = {0.006, 0.075, 0.075, 0.037, 0.020};
    const int n = 256 * 64;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    uint8_t *q = malloc(quant_row_bytes(ST_Q8_0, n));
    for (int dist = 0; dist < 2; dist++) {
        for (int i = 0; i < n; i++) x[i] = dist ? gauss() * 0.02f : unif();
        for (int t = 0; t < NT; t++) {
            st_dtype d = types[t];
            ok(quant_quantize_row(d, x, q, n) == 0, "%s quantizes", st_dtype_name(d));
            quant_dequant_row(d, q, y, 0, n);
            double se = 0, sx = 0;
            for (int i = 0; i < n; i++) {
                se += (double)(y[i] - x[i]) * (y[i] - x[i]);
                sx += (double)x[i] * x[i];
            }
            double rel = sqrt(se / sx);
            /* gaussian blocks have outliers that stretch the span: 1.5x the uniform bound */
            double bound = bound_u[t] * (dist ? 1.5 : 1.0);
            ok(rel < bound, "%s round trip on %s data: relative RMS error %.5f < %.3f", st_dtype_name(d),
               dist ? "gaussian (sd 0.02)" : "uniform [-1,1)", rel, bound);
            printf("# %s %s rel_rms %.6f\n", st_dtype_name(d), dist ? "gauss" : "uniform", rel);
        }
    }
    /* Q8_0: every element within d/2 (+ the f16 rounding of d) */
    for (int i = 0; i < n; i++) x[i] = unif() * 3;
    quant_quantize_row(ST_Q8_0, x, q, n);
    quant_dequant_row(ST_Q8_0, q, y, 0, n);
    int bad = 0;
    for (int b = 0; b < n / 32; b++) {
        uint16_t h = (uint16_t)(q[34 * b] | q[34 * b + 1] << 8);
        float d = f16_to_f32(h);
        for (int i = 0; i < 32; i++) bad += fabsf(y[32 * b + i] - x[32 * b + i]) > d * (0.5f + 127 * 0x1p-11f);
    }
    ok(!bad, "Q8_0 element error <= d/2 + 127 ulp16(d) (%d over)", bad);
    /* special blocks: zeros, a constant, small values (subnormal f16 scales), one spike;
     * values below the f16 range of the scales (1e-6 / 127 < 2^-24) may flush to zero,
     * as in ggml: those only need to stay finite and no larger */
    for (int t = 0; t < NT; t++) {
        st_dtype d = types[t];
        float v[256];
        int okz = 1;
        for (int c = 0; c < 5; c++) {
            for (int i = 0; i < 256; i++)
                v[i] = c == 0 ? 0.0f : c == 1 ? -0.75f : c == 2 ? unif() * 1e-3f : c == 3 ? (i == 77 ? 40.0f : unif() * 0.01f)
                                                                                : unif() * 1e-6f;
            quant_quantize_row(d, v, q, 256);
            quant_dequant_row(d, q, y, 0, 256);
            float amax = 0, emax = 0;
            for (int i = 0; i < 256; i++) {
                amax = fmaxf(amax, fabsf(v[i]));
                emax = fmaxf(emax, fabsf(y[i] - v[i]));
                if (!isfinite(y[i])) okz = 0;
            }
            if (c == 0 && emax != 0) okz = 0;
            if (c < 4 && emax > amax * 0.26f) okz = 0;    /* never worse than a quarter of the max */
            if (c == 4 && emax > amax * 2) okz = 0;
        }
        ok(okz, "%s: zero, constant, small, spiky and tiny blocks quantize to finite, close values", st_dtype_name(d));
        /* non-finite and huge inputs: a valid block of finite values (no undefined
         * float-to-int conversion on the way: the sanitizer build checks that) */
        int fin = 1;
        for (int c = 0; c < 4; c++) {
            for (int i = 0; i < 256; i++) v[i] = unif();
            for (int i = 0; i < 256; i += 7)
                v[i] = c == 0 ? NAN : c == 1 ? INFINITY : c == 2 ? -INFINITY : (i & 8 ? 3e38f : -3e38f);
            if (c == 3) v[5] = NAN, v[6] = -INFINITY;
            quant_quantize_row(d, v, q, 256);
            quant_dequant_row(d, q, y, 0, 256);
            for (int i = 0; i < 256; i++) fin &= isfinite(y[i]) != 0;
        }
        ok(fin, "%s: NaN, inf and 3e38 inputs give a block of finite values", st_dtype_name(d));
    }
    free(x);
    free(y);
    free(q);
}

/* ---- kernels ---- */

/* A random row: random bytes, then the f16 scales replaced by finite values from the
 * whole half range (zero, subnormal, up to 65504) so sums stay finite. */
static void random_row(st_dtype d, uint8_t *row, int n, int extreme)
{
    size_t bytes = quant_row_bytes(d, n), bb = quant_block_bytes(d);
    for (size_t i = 0; i < bytes; i++) row[i] = (uint8_t)rnd();
    static const uint16_t ext[] = {0x0000, 0x0001, 0x03ff, 0x0400, 0x7bff, 0xfbff, 0x8001, 0x3c00};
    for (size_t b = 0; b < bytes / bb; b++) {
        uint8_t *p = row + b * bb;
        size_t off = d == ST_Q6_K ? 208 : 0;
        int ns = d == ST_Q4_K || d == ST_Q5_K ? 2 : 1;
        for (int k = 0; k < ns; k++) {
            uint16_t h = extreme ? ext[rnd() % 8] : (uint16_t)(0x1000 + rnd() % 0x2c00 + (rnd() & 0x8000));
            put16(p + off + 2 * k, h);
        }
    }
}

static void kernels(int lv)
{
    const int n = 3072;
    enum { NR = QDOT_ROWS + 1 };
    uint8_t *rows = malloc(NR * quant_row_bytes(ST_Q8_0, n));
    float *x = malloc(4 * n * sizeof *x), *w = malloc(n * sizeof *w);
    static const char *const names[] = {"portable", "AVX2/FMA", "AVX-512"};
    const char *L = names[lv];
    for (int t = 0; t < NT; t++) {
        st_dtype d = types[t];
        size_t rb = quant_row_bytes(d, n);
        int bad_ref = 0, bad_port = 0, bad_rows = 0, bad_tok = 0;
        for (int trial = 0; trial < 24; trial++) {
            for (int r = 0; r < NR; r++) random_row(d, rows + r * rb, n, trial % 3 == 2);
            for (int i = 0; i < 4 * n; i++) x[i] = trial % 4 == 3 ? gauss() * 100 : unif();
            float ref[NR];
            for (int r = 0; r < NR; r++) {
                quant_dequant_row(d, rows + r * rb, w, 0, n);
                ref[r] = canon_dot(w, x, n);
                bad_ref += !same_bits(qdot(d, rows + r * rb, x, n), ref[r]);
                bad_port += !same_bits(qdot_portable(d, rows + r * rb, x, n), ref[r]);
            }
            for (int nr = 1; nr <= QDOT_ROWS; nr++) {
                float out[QDOT_ROWS];
                qdot_rows(d, rows + rb, rb, nr, x, n, out);
                for (int r = 0; r < nr; r++) bad_rows += !same_bits(out[r], ref[1 + r]);
            }
            quant_dequant_row(d, rows, w, 0, n);
            for (int nt = 1; nt <= QDOT_TOKENS; nt++) {
                float out[QDOT_TOKENS];
                qdot_tokens(d, rows, x, (size_t)n, nt, n, out);
                for (int k = 0; k < nt; k++) bad_tok += !same_bits(out[k], canon_dot(w, x + (size_t)k * n, n));
            }
        }
        ok(!bad_ref, "%s %s qdot = canonical fmaf dot of the dequantized row, bit for bit (%d differ)",
           L, st_dtype_name(d), bad_ref);
        ok(!bad_port, "%s %s portable path = the reference, bit for bit (%d differ)", L, st_dtype_name(d), bad_port);
        ok(!bad_rows, "%s %s qdot_rows (1..QDOT_ROWS rows) = the reference (%d differ)", L, st_dtype_name(d), bad_rows);
        ok(!bad_tok, "%s %s qdot_tokens (1..QDOT_TOKENS tokens) = the reference (%d differ)", L, st_dtype_name(d), bad_tok);
        /* the many-token path's panel conversion: exactly quant_dequant_row, for whole
         * panels and short ones, at any block-aligned offset */
        const gemm_ops *op = qdot_gemm_ops(d);
        int bs = quant_block_size(d), bad_cvt = 0;
        static const int offs[] = {0, 512, 2560}, lens[] = {32, 96, 256, 512};
        float *got = malloc(512 * sizeof *got);
        for (int trial = 0; trial < 8; trial++) {
            random_row(d, rows, n, trial % 3 == 2);
            for (int i = 0; i < 3; i++)
                for (int j = 0; j < 4; j++) {
                    if (lens[j] % bs || offs[i] + lens[j] > n) continue;
                    quant_dequant_row(d, rows, w, offs[i], lens[j]);
                    op->cvt(rows, offs[i], lens[j], got);
                    bad_cvt += memcmp(got, w, (size_t)lens[j] * sizeof *got) != 0;
                }
        }
        free(got);
        ok(!bad_cvt, "%s %s qdot_gemm_ops cvt = quant_dequant_row, bit for bit (%d differ)", L, st_dtype_name(d), bad_cvt);
    }
    free(rows);
    free(x);
    free(w);
}


/* ---- a whole model: quantized weights vs the same weights dequantized to f32 ----
 * A synthetic Phi-3 (hidden 256 so every K type fits, GQA, 2 layers) built in memory:
 * once with quantized tensors, once with each of them dequantized exactly to F32. The
 * CPU backend must give the same logits (issue 12: within 1e-5 relative L2; with every
 * dot in the one canonical order they are bit-identical). */

typedef struct synth {
    phi3_model m;
    phi3_layer layers[2];
    void *bufs[32];
    int nbufs;
} synth;

static void *keep(synth *s, size_t bytes)
{
    void *p = calloc(1, bytes);
    s->bufs[s->nbufs++] = p;
    return p;
}

/* A tensor of rows x cols: gaussian * sd (+ bias), stored as dtype q; its exact f32
 * twin goes to twin. */
static void tensor(synth *s, synth *twin, phi3_weight *w, phi3_weight *w2, int64_t rows, int64_t cols,
                   st_dtype q, float sd, float bias)
{
    size_t n = (size_t)(rows * cols);
    float *f = malloc(n * sizeof *f);
    for (size_t i = 0; i < n; i++) f[i] = gauss() * sd + bias;
    size_t rb = quant_row_bytes(q, cols);
    uint8_t *data = keep(s, rb * (size_t)rows);
    for (int64_t r = 0; r < rows; r++) quant_quantize_row(q, f + r * cols, data + r * rb, cols);
    float *deq = keep(twin, n * sizeof(float));
    for (int64_t r = 0; r < rows; r++) quant_dequant_row(q, data + r * rb, deq + r * cols, 0, cols);
    free(f);
    *w = (phi3_weight){data, q, rows, cols};
    *w2 = (phi3_weight){deq, ST_F32, rows, cols};
}

/* types: embed, qkv, o, gate_up, down, lm_head (the same in both layers but down/qkv,
 * which take alt in layer 1, as Q4_K_M varies them by layer). */
static void synth_build(synth *s, synth *t, const st_dtype *ty, const st_dtype *alt)
{
    memset(s, 0, sizeof *s);
    memset(t, 0, sizeof *t);
    phi3_config c = {0};
    c.hidden = 256;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 64;
    c.n_layers = 2;
    c.intermediate = 512;
    c.vocab = 320;
    c.rms_eps = 1e-5f;
    c.rope_theta = 10000;
    c.attn_factor = 1.0;
    c.original_max_pos = c.max_pos = 4096;
    s->m.cfg = t->m.cfg = c;
    int H = c.hidden, qkv = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim, I = c.intermediate;
    tensor(s, t, &s->m.embed, &t->m.embed, c.vocab, H, ty[0], 1.0f, 0);
    tensor(s, t, &s->m.norm, &t->m.norm, 1, H, ST_F32, 0.1f, 1.0f);
    tensor(s, t, &s->m.lm_head, &t->m.lm_head, c.vocab, H, ty[5], 0.05f, 0);
    for (int l = 0; l < 2; l++) {
        phi3_layer *L = &s->layers[l], *T = &t->layers[l];
        tensor(s, t, &L->ln1, &T->ln1, 1, H, ST_F32, 0.1f, 1.0f);
        tensor(s, t, &L->qkv, &T->qkv, qkv, H, l ? alt[1] : ty[1], 0.06f, 0);
        tensor(s, t, &L->o, &T->o, H, c.n_heads * c.head_dim, ty[2], 0.06f, 0);
        tensor(s, t, &L->ln2, &T->ln2, 1, H, ST_F32, 0.1f, 1.0f);
        tensor(s, t, &L->gate_up, &T->gate_up, 2 * I, H, ty[3], 0.06f, 0);
        tensor(s, t, &L->down, &T->down, H, I, l ? alt[4] : ty[4], 0.04f, 0);
    }
    s->m.layers = s->layers;
    t->m.layers = t->layers;
}

static void synth_free(synth *s)
{
    for (int i = 0; i < s->nbufs; i++) free(s->bufs[i]);
}

/* Three frame shapes, all logits: 9 tokens (4..12 tokens: rows dequantized, the few-token
 * tiles), 3 single-token steps (the decode rows), then 28 tokens (13+: the blocked GEMM
 * with dequantized panels); or (whole) all NTOK in one frame (the blocked GEMM). */
enum { NTOK = 40 };
static int run_model(const phi3_model *m, int threads, float *out, int whole)
{
    char err[256];
    backend *b = backend_cpu_new(m, 64, threads, NULL, err, sizeof err);
    if (!b) return -1;
    int32_t ids[NTOK];
    for (int k = 0; k < NTOK; k++) ids[k] = (k * 37 + 5) % 320;
    int V = m->cfg.vocab, rc;
    if (whole) rc = b->ops->forward(b, ids, NTOK, out, 1);
    else {
        rc = b->ops->forward(b, ids, 9, out, 1);
        for (int k = 9; k < 12 && !rc; k++) rc = b->ops->forward(b, ids + k, 1, out + (size_t)k * V, 0);
        if (!rc) rc = b->ops->forward(b, ids + 12, NTOK - 12, out + (size_t)12 * V, 1);
    }
    b->ops->destroy(b);
    return rc;
}

static void model_equivalence(void)
{
    static const struct { const char *name; st_dtype ty[6], alt[6]; } mixes[] = {
        {"Q8_0", {ST_Q8_0, ST_Q8_0, ST_Q8_0, ST_Q8_0, ST_Q8_0, ST_Q8_0}, {0, ST_Q8_0, 0, 0, ST_Q8_0, 0}},
        {"Q4_0", {ST_Q4_0, ST_Q4_0, ST_Q4_0, ST_Q4_0, ST_Q4_0, ST_Q6_K}, {0, ST_Q4_0, 0, 0, ST_Q4_0, 0}},
        {"Q4_K_M mix", {ST_Q4_K, ST_Q6_K, ST_Q4_K, ST_Q4_K, ST_Q6_K, ST_Q6_K}, {0, ST_Q5_K, 0, 0, ST_Q4_K, 0}},
    };
    for (size_t i = 0; i < sizeof mixes / sizeof *mixes; i++) {
        synth q, f;
        synth_build(&q, &f, mixes[i].ty, mixes[i].alt);
        size_t nl = NTOK * (size_t)q.m.cfg.vocab;
        float *lq = malloc(nl * sizeof(float)), *lf = malloc(nl * sizeof(float)), *l1 = malloc(nl * sizeof(float));
        int rc = run_model(&q.m, 2, lq, 0) | run_model(&f.m, 2, lf, 0);
        double num = 0, den = 0;
        size_t same = 0;
        for (size_t k = 0; k < nl; k++) {
            num += ((double)lq[k] - lf[k]) * ((double)lq[k] - lf[k]);
            den += (double)lf[k] * lf[k];
            same += same_bits(lq[k], lf[k]);
        }
        double rel = sqrt(num / den);
        ok(rc == 0 && rel <= 1e-5, "%s model: logits vs the f32-dequantized model, relative L2 %.3g <= 1e-5",
           mixes[i].name, rel);
        ok(rc == 0 && same == nl, "%s model: ... and bit-identical (%zu of %zu logits)", mixes[i].name, same, nl);
        /* the same bits with 1 thread, in one frame, and at every kernel level */
        int top = qdot_level();
        for (int lv = -2; lv <= top; lv++) {
            if (lv >= 0) qdot_set_level(lv);
            rc = run_model(&q.m, lv == -2 ? 1 : 2, l1, lv == -1);
            size_t s2 = 0;
            for (size_t k = 0; k < nl; k++) s2 += same_bits(l1[k], lf[k]);
            ok(rc == 0 && s2 == nl, "%s model, %s: bit-identical to the f32 model (%zu of %zu)", mixes[i].name,
               lv == -2 ? "1 thread" : lv == -1 ? "40 tokens in one frame" : lv == 0 ? "portable kernels"
               : lv == 1 ? "AVX2 kernels" : "AVX-512 kernels", s2, nl);
        }
        qdot_set_level(top);
        free(lq);
        free(lf);
        free(l1);
        synth_free(&q);
        synth_free(&f);
    }
}

int main(void)
{
    sizes();
    safetensors_refuses_blocks();
    half_rounding();
    known_blocks();
    roundtrip();
    /* every kernel level this CPU has (the portable one always) */
    int top = qdot_level();
    printf("# CPU kernel levels: 0..%d\n", top);
    for (int lv = 0; lv <= top; lv++) {
        qdot_set_level(lv);
        kernels(lv);
    }
    if (top >= 2) {     /* level 2's other Q8_0 row kernel (decode/qdot.c: the same bits) */
        int was = qdot_q8_0_kernel(-1);
        printf("# AVX-512 with the %s Q8_0 row kernel\n", was ? "ymm" : "paired");
        qdot_q8_0_kernel(!was);
        kernels(2);
        qdot_q8_0_kernel(was);
    }
    qdot_set_level(top);
    model_equivalence();
    return tap_done();
}
