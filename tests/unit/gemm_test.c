/* gemm_test.c: every matmul path (one token, blocked many-token; scalar, AVX2, AVX-512)
 * gives the bits of the canonical dot order of decode/gemm.h, written out here directly
 * with fmaf, for bf16, f16 and f32 weights, shapes with row/column/token tails; and that
 * order is a dot product (checked against double precision). */
#include "decode/gemm.h"
#include "tests/unit/tap.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint32_t rng = 12345;
static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}
static float frand(void) { return (float)((double)rnd() / 4294967296.0 * 2 - 1); }

static float wval(st_dtype d, const void *w, size_t i)
{
    if (d == ST_BF16) return bf16_to_f32(((const uint16_t *)w)[i]);
    if (d == ST_F16) return f16_to_f32(((const uint16_t *)w)[i]);
    return ((const float *)w)[i];
}

/* The canonical order, written plainly. */
static float canon(st_dtype d, const void *w, const float *x, int n)
{
    float a[8] = {0};
    int k = 0;
    for (; k + 8 <= n; k += 8)
        for (int j = 0; j < 8; j++) a[j] = fmaf(wval(d, w, k + j), x[k + j], a[j]);
    float r = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    for (; k < n; k++) r = fmaf(wval(d, w, k), x[k], r);
    return r;
}

static void fill_w(st_dtype d, void *w, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float f = frand();
        if (d == ST_F32) ((float *)w)[i] = f;
        else if (d == ST_BF16) {
            uint32_t u;
            memcpy(&u, &f, 4);
            ((uint16_t *)w)[i] = (uint16_t)(u >> 16);
        } else {
            /* f16 in [-1, 1): sign, exponent 1..14, any mantissa */
            ((uint16_t *)w)[i] = (uint16_t)((rnd() & 0x8000) | ((1 + rnd() % 14) << 10) | (rnd() & 0x3ff));
        }
    }
}

int main(void)
{
    const st_dtype types[3] = {ST_BF16, ST_F16, ST_F32};
    const char *tn[3] = {"bf16", "f16", "f32"};
    const int shapes[][3] = {/* rows, K, tokens */
                             {1, 1, 1},    {5, 7, 4},     {16, 8, 6},    {37, 3072 + 5, 9},
                             {20, 300, 64}, {33, 520, 70}, {9, 96, 2},   {64, 256, 13},
                             {17, 1000, 5}, {19, 40, 300}};
    float *scratch = malloc(gemm_scratch_floats() * sizeof(float));
    int levels = gemm_vec_level() + 1;
    printf("# vector level of this CPU: %d\n", levels - 1);
    for (int ti = 0; ti < 3; ti++)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            int R = shapes[si][0], K = shapes[si][1], N = shapes[si][2];
            size_t es = st_dtype_size(types[ti]);
            void *w = malloc((size_t)R * K * es);
            float *x = malloc((size_t)N * K * sizeof(float)), *ref = malloc((size_t)N * R * sizeof(float));
            float *out = malloc((size_t)N * (R + 3) * sizeof(float));
            fill_w(types[ti], w, (size_t)R * K);
            for (size_t i = 0; i < (size_t)N * K; i++) x[i] = frand();
            double maxerr = 0;
            for (int t = 0; t < N; t++)
                for (int r = 0; r < R; r++) {
                    const void *row = (const uint8_t *)w + (size_t)r * K * es;
                    ref[t * R + r] = canon(types[ti], row, x + (size_t)t * K, K);
                    double d = 0, S = 0;
                    for (int k = 0; k < K; k++) {
                        double p = (double)wval(types[ti], row, k) * x[(size_t)t * K + k];
                        d += p, S += fabs(p);
                    }
                    /* error of a sum of K/8 + 3 + 7 rounded steps, relative to sum |w x| */
                    double e = fabs(d - ref[t * R + r]) / ((K / 8 + 10) * 0x1p-24 * S + 1e-30);
                    if (e > maxerr) maxerr = e;
                }
             ok(maxerr <= 1, "%s %dx%d: canonical order within the rounding bound of double (%.2f of it)", tn[ti], R, K, maxerr);
            for (int lv = 0; lv < levels; lv++) {
                const gemm_ops *op = gemm_ops_level(types[ti], lv);
                /* all tokens at once (blocked when >= 4), rows split at an odd place, ldo > R */
                int ldo = R + 3, split = R / 3;
                memset(out, 0xff, (size_t)N * ldo * sizeof(float));
                gemm_rows(op, w, (size_t)K * es, K, 0, split, x, (size_t)K, N, out, (size_t)ldo, scratch);
                gemm_rows(op, w, (size_t)K * es, K, split, R, x, (size_t)K, N, out, (size_t)ldo, scratch);
                int same = 1;
                for (int t = 0; t < N; t++)
                    for (int r = 0; r < R; r++)
                        if (memcmp(&out[t * ldo + r], &ref[t * R + r], 4)) same = 0;
                ok(same, "%s %dx%d, %d tokens in one call, level %d: canonical bits", tn[ti], R, K, N, lv);
                /* one token at a time */
                same = 1;
                for (int t = 0; t < N; t++) {
                    gemm_rows(op, w, (size_t)K * es, K, 0, R, x + (size_t)t * K, (size_t)K, 1, out, (size_t)ldo,
                              scratch);
                    for (int r = 0; r < R; r++)
                        if (memcmp(&out[r], &ref[t * R + r], 4)) same = 0;
                }
                ok(same, "%s %dx%d one token at a time, level %d: canonical bits", tn[ti], R, K, lv);
            }
            free(w);
            free(x);
            free(ref);
            free(out);
        }
    /* the few-token path: every token count 1..20 (register tiles of every width, one
     * to four token tiles), K with and without a tail of 1..7, 13 rows split at 5 (row
     * tiles cut short at both ends), at every level, against the canonical order; and
     * the same with the few-token path off (the blocked and one-token paths) */
    {
        const int Ks[] = {1, 7, 8, 13, 72, 267, 1029};
        enum { R = 13, NMAX = 20 };
        /* pass 2: x packed by gemm_pack_x (7..12 tokens on AVX-512: the token-pair tile) */
        float *xq = malloc(12 * 1029 * sizeof(float));
        int packed_calls = 0;
        for (int pass = 0; pass < 3; pass++) {
            gemm_set_small_max(pass == 1 ? 0 : -1);
            for (int ti = 0; ti < 3; ti++) {
                size_t es = st_dtype_size(types[ti]);
                int bad = 0, checks = 0;
                for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++) {
                    int K = Ks[ki];
                    void *w = malloc((size_t)R * K * es);
                    float *x = malloc((size_t)NMAX * (K + 1) * sizeof(float)), *out = malloc((size_t)NMAX * (R + 2) * sizeof(float));
                    fill_w(types[ti], w, (size_t)R * K);
                    for (size_t i = 0; i < (size_t)NMAX * (K + 1); i++) x[i] = frand();
                    for (int lv = 0; lv < levels; lv++) {
                        const gemm_ops *op = gemm_ops_level(types[ti], lv);
                        for (int N = 1; N <= NMAX; N++) {
                            int ldo = R + 2;    /* ldx = K + 1, ldo = R + 2: strides are not widths */
                            memset(out, 0xff, (size_t)N * ldo * sizeof(float));
                            const float *q = NULL;
                            if (pass == 2 && gemm_xq_floats(op, N, K)) {
                                if (gemm_xq_floats(op, N, K) > (size_t)12 * K) bad++;
                                gemm_pack_x(op, x, (size_t)K + 1, N, K, xq);
                                q = xq, packed_calls++;
                            }
                            gemm_rows_xq(op, w, (size_t)K * es, K, 0, 5, x, (size_t)K + 1, N, out, (size_t)ldo, scratch, q);
                            gemm_rows_xq(op, w, (size_t)K * es, K, 5, R, x, (size_t)K + 1, N, out, (size_t)ldo, scratch, q);
                            for (int t = 0; t < N; t++)
                                for (int r = 0; r < R; r++) {
                                    float c = canon(types[ti], (const uint8_t *)w + (size_t)r * K * es, x + (size_t)t * (K + 1), K);
                                    checks++;
                                    if (memcmp(&out[t * ldo + r], &c, 4)) bad++;
                                }
                        }
                    }
                    free(w);
                    free(x);
                    free(out);
                }
                ok(!bad, "%s, 1..%d tokens x %d rows, K = 1..1029 with tails, every level%s: canonical bits (%d of %d differ)",
                   tn[ti], NMAX, R, pass == 1 ? ", few-token path off" : pass == 2 ? ", x packed" : "", bad, checks);
            }
        }
        gemm_set_small_max(-1);
        /* 3 types x 6 token counts x the K of at least one whole 16-column step, where the CPU has AVX-512 */
        ok(gemm_vec_level() < 2 || packed_calls == 3 * 6 * 5, "the packed tile ran (%d calls)", packed_calls);
        free(xq);
    }
    /* gemm_dot_f32 (attention scores) */
    float a[100], b[100];
    for (int i = 0; i < 100; i++) a[i] = frand(), b[i] = frand();
    float r = gemm_dot_f32(a, b, 100), c = canon(ST_F32, a, b, 100);
    ok(!memcmp(&r, &c, 4), "gemm_dot_f32 follows the canonical order");
    /* f32 -> f16: F16C (8 at a time) and the C version (one at a time) agree on every
     * class of input; spot values checked against the IEEE encoding */
    if (gemm_vec_level()) {
        enum { NF = 1 << 16 };
        float *f = malloc(NF * sizeof(float));
        uint16_t *h8 = malloc(NF * 2), h1;
        for (int i = 0; i < NF; i++) {
            uint32_t u = rnd();
            if (i % 4 == 1) u = (u & 0x80000000u) | (0x33000000u + u % 0x06000000u);   /* subnormal halves */
            if (i % 4 == 2) u = (u & 0x80000000u) | (0x47000000u + u % 0x01000000u);   /* near 65504 */
            if (i % 4 == 3) u = (u & 0x807fffffu) | ((uint32_t)(103 + i % 40) << 23); /* every exponent */
            memcpy(&f[i], &u, 4);
        }
        gemm_f32_to_f16(f, h8, NF);
        int same = 1;
        for (int i = 0; i < NF; i++) {
            gemm_f32_to_f16(f + i, &h1, 1);
            if (h1 != h8[i] && !isnan(f[i])) same = 0;
        }
        ok(same, "f32->f16: C and F16C round the same (%d values)", NF);
        free(f);
        free(h8);
    }
    const float sv[] = {1.0f, 65504.0f, 65520.0f, 0x1p-24f, 0x1p-25f, 0x1.8p-25f, -2.0f, 1.0f + 0x1p-11f};
    const uint16_t sh[] = {0x3c00, 0x7bff, 0x7c00, 0x0001, 0x0000, 0x0001, 0xc000, 0x3c00};
    int spots = 1;
    for (int i = 0; i < 8; i++) {
        uint16_t h;
        gemm_f32_to_f16(&sv[i], &h, 1);
        if (h != sh[i]) spots = 0;
    }
    ok(spots, "f32->f16: 1, 65504, 65520 -> inf, 2^-24, ties to even");
    /* the softmax exp: within 2 ulp of e^x on [-87, 0]; every vector width the same bits */
    {
        enum { NE = 200003 };
        float *xs = malloc(NE * sizeof(float)), *ys = malloc(NE * sizeof(float));
        double worst = 0;
        for (int i = 0; i < NE; i++) {
            float x = -87.0f * (float)i / (NE - 1);
            float y = gemm_exp(x);
            double e = exp((double)x), ulp = ldexp(1.0, ilogb(e) - 23);
            if (fabs(y - e) / ulp > worst) worst = fabs(y - e) / ulp;
            xs[i] = x;
        }
        ok(worst <= 2, "gemm_exp within 2 ulp of e^x on [-87, 0] (worst %.2f ulp)", worst);
        for (int i = 0; i < NE; i++) {
            uint32_t u = rnd();
            float f;
            memcpy(&f, &u, 4);
            xs[i] = i % 3 ? -100.0f * (float)rnd() / 4294967296.0f : f;   /* and any bits: NaN, inf */
            ys[i] = xs[i] + 1.5f;
        }
        gemm_exp_sub(ys, NE, 1.5f);
        int same = 1;
        for (int i = 0; i < NE; i++) {
            float y = gemm_exp((xs[i] + 1.5f) - 1.5f);
            if (memcmp(&y, &ys[i], 4) && !(isnan(y) && isnan(ys[i]))) same = 0;
        }
        ok(same, "gemm_exp_sub (vector level %d) equals gemm_exp element by element", gemm_vec_level());
        float spot[4] = {-INFINITY, -88.0f, 0.0f, NAN};
        gemm_exp_sub(spot, 4, 0.0f);
        ok(spot[0] == 0 && spot[1] == 0 && spot[2] == 1.0f && isnan(spot[3]), "exp(-inf) = exp(-88) = 0, exp(0) = 1, NaN stays");
        free(xs);
        free(ys);
    }
    free(scratch);
    return tap_done();
}
