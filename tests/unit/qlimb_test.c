/* qlimb_test: the opt-in integer decode products (decode/qlimb.h) against the weights
 * dequantized exactly to float32 (quant_dequant_row) and summed in double, within the
 * bound the limbs promise (|x - its three limbs| <= max|x of its 32| 2^-21, plus float
 * rounding), for Q4_K, Q5_K and Q6_K rows made by the quantizer and rows of random bytes,
 * activations with zero, subnormal, huge and ordinary sub-blocks, 1..8 rows per call;
 * the plain C preparation writes the AVX-512 one's bytes; a NaN comes out as NaN. */
#include "decode/qlimb.h"
#include "embed/quant.h"
#include "tap.h"
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 88172645463325252ull;
static double urand(void)       /* [0, 1) */
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}

#define K 1024
#define R 19

/* activations: sub-block j of 32 has its own magnitude; some are zero, one tiny
 * (subnormal), one huge */
static void make_x(float *x, int kind)
{
    for (int j = 0; j < K / 32; j++) {
        double mag = kind == 0 ? pow(10.0, urand() * 4 - 2) : 1.0;
        if (kind == 1 && j % 7 == 3) mag = 0;
        if (kind == 1 && j == 5) mag = 1e-41;
        if (kind == 1 && j == 9) mag = 1e30;
        for (int i = 0; i < 32; i++) x[32 * j + i] = (float)((urand() * 2 - 1) * mag);
    }
}

/* R rows of type d: from random floats through the quantizer, or random bytes with sane
 * f16 scales (every q and 6-bit scale pattern) */
static uint8_t *make_rows(st_dtype d, int raw, size_t *rb)
{
    *rb = quant_row_bytes(d, K);
    uint8_t *w = malloc(R * *rb);
    float src[K];
    for (int r = 0; r < R; r++) {
        uint8_t *row = w + r * *rb;
        if (!raw) {
            for (int i = 0; i < K; i++) src[i] = (float)((urand() * 2 - 1) * (1 + (i % 97 == 0) * 20));
            quant_quantize_row(d, src, row, K);
            continue;
        }
        for (size_t i = 0; i < *rb; i++) row[i] = (uint8_t)(urand() * 256);
        size_t bb = *rb / (K / QK_K);
        for (int b = 0; b < K / QK_K; b++) {
            uint8_t *blk = row + b * bb;
            uint16_t h1 = quant_f32_to_f16((float)(1e-3 * (0.1 + urand()))), h2 = quant_f32_to_f16((float)(1e-3 * urand()));
            if (d == ST_Q6_K) memcpy(blk + 208, &h1, 2);
            else memcpy(blk, &h1, 2), memcpy(blk + 2, &h2, 2);
        }
    }
    return w;
}

/* worst |kernel - exact| / bound over the rows, and the same for qlimb_ref */
static void check(st_dtype d, const uint8_t *w, size_t rb, const float *x, void *xp, double *worst_k,
                  double *worst_r)
{
    float deq[K], out[R];
    int r = 0, step[] = {8, 8, 3};
    for (int s = 0; s < 3; r += step[s], s++) qlimb_rows(d, w + r * rb, rb, step[s], xp, K, out + r);
    *worst_k = *worst_r = 0;
    for (r = 0; r < R; r++) {
        quant_dequant_row(d, w + r * rb, deq, 0, K);
        double exact = 0, mag = 0, lim = 0;
        for (int j = 0; j < K / 32; j++) {
            float mx = 0;
            for (int i = 0; i < 32; i++) mx = fmaxf(mx, fabsf(x[32 * j + i]));
            for (int i = 32 * j; i < 32 * j + 32; i++) {
                exact += (double)deq[i] * x[i];
                mag += fabs((double)deq[i] * x[i]);
                lim += fabs((double)deq[i]) * mx;
            }
        }
        /* the limbs' bound, then float rounding: converts, scales and 16-lane sums */
        double bound = lim * ldexp(1, -21) + 2e-6 * (mag + lim * ldexp(1, -21)) + 1e-37;
        double ek = fabs(out[r] - exact) / bound, er = fabs(qlimb_ref(d, w + r * rb, xp, K) - exact) / bound;
        if (!(ek <= *worst_k)) *worst_k = ek;    /* NaN sticks */
        if (!(er <= *worst_r)) *worst_r = er;
    }
}

/* 1 if /proc/cpuinfo lists every flag qlimb needs (an independent look at the CPU) */
static int cpuinfo_has_all(void)
{
    static const char *want[] = {" avx512f", " avx512bw", " avx512vl", " avx512dq", " avx512_vnni"};
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[8192];
    int found = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "flags", 5)) {
            found = 1;
            strcat(line, " ");
            for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
                char w[32];
                snprintf(w, sizeof w, "%s ", want[i]);
                char *p = strstr(line, w);
                if (!p) found = 0;
            }
            break;
        }
    if (f) fclose(f);
    return found;
}

int main(void)
{
    qlimb_force(1);
    if (cpuinfo_has_all() && !getenv("PHI3_NO_AVX512") && !getenv("PHI3_NO_AVX"))
        ok(qlimb_enabled(), "/proc/cpuinfo lists AVX-512 F/BW/VL/DQ and VNNI: the kernels are used");
    if (!qlimb_enabled()) {
        printf("ok %d # skip the CPU lacks AVX-512 VNNI (or PHI3_NO_AVX512 is set)\n", ++tap_n);
        return tap_done();
    }
    const st_dtype types[] = {ST_Q4_K, ST_Q5_K, ST_Q6_K};
    const char *names[] = {"Q4_K", "Q5_K", "Q6_K"};
    float x[K];
    void *xp = aligned_alloc(64, qlimb_xbytes(K)), *xq = aligned_alloc(64, qlimb_xbytes(K));
    for (int t = 0; t < 3; t++) {
        for (int raw = 0; raw < 2; raw++) {
            size_t rb;
            uint8_t *w = make_rows(types[t], raw, &rb);
            for (int kind = 0; kind < 2; kind++) {
                make_x(x, kind);
                qlimb_force(2);
                qlimb_prep(types[t], x, K, xq);
                qlimb_force(1);
                qlimb_prep(types[t], x, K, xp);
                ok(!memcmp(xp, xq, qlimb_xbytes(K)), "%s: the plain C preparation writes the AVX-512 bytes (x kind %d)",
                   names[t], kind);
                double ek, er;
                check(types[t], w, rb, x, xp, &ek, &er);
                ok(ek <= 1 && er <= 1, "%s %s rows, x kind %d: within the limbs' bound (worst %.3g, reference %.3g of it)",
                   names[t], raw ? "random-byte" : "quantized", kind, ek, er);
            }
            free(w);
        }
    }
    /* the check can fail: x prepared in another type's byte order */
    {
        size_t rb;
        uint8_t *w = make_rows(ST_Q4_K, 0, &rb);
        make_x(x, 0);
        qlimb_prep(ST_Q6_K, x, K, xp);
        double ek, er;
        check(ST_Q4_K, w, rb, x, xp, &ek, &er);
        ok(ek > 1, "Q4_K rows against x in Q6_K's order: far outside the bound (%.3g)", ek);
        x[100] = NAN;
        qlimb_prep(ST_Q4_K, x, K, xp);
        float o[2];
        qlimb_rows(ST_Q4_K, w, rb, 2, xp, K, o);
        ok(isnan(o[0]) && isnan(o[1]), "a NaN activation gives NaN (%g %g)", o[0], o[1]);
        free(w);
    }
    free(xp);
    free(xq);
    return tap_done();
}
