/* sample_test.c: the sampler against independent references: a sort-based filter,
 * softmax frequencies over 20,000 seeded draws (within 3 standard errors), penalties by
 * formula, libm for exp/log. TAP on stdout. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sample/sampler.h"

static int n_test, n_fail;

static int ok(int cond, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%sok %d - ", cond ? "" : "not ", ++n_test);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (!cond) n_fail++;
    return cond;
}

/* A test-local generator (not the sampler's) for crafting logits. */
static uint64_t lcg_state = 12345;
static double lcg_uniform(void)
{
    lcg_state = lcg_state * 6364136223846793005u + 1442695040888963407u;
    return (double)(lcg_state >> 11) * 0x1p-53;
}

/* ---- reference filters: full sort, written the obvious way ---- */

typedef struct { double l; int id; } ref_c;
static int by_logit_desc(const void *a, const void *b)
{
    const ref_c *x = a, *y = b;
    if (x->l != y->l) return x->l < y->l ? 1 : -1;
    return x->id - y->id;
}
static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

/* Kept ids (ascending) for top-k then top-p then min-p on logits, by sorting. Only for
 * logits without ties at the boundary (the tests ensure that). */
static int ref_kept(const float *l, int n, int k, double top_p, double min_p, int *out)
{
    ref_c *c = malloc(sizeof *c * (size_t)n);
    for (int i = 0; i < n; i++) c[i] = (ref_c){l[i], i};
    qsort(c, (size_t)n, sizeof *c, by_logit_desc);
    int m = (k > 0 && k < n) ? k : n;
    if (top_p < 1) {
        double z = 0, cum = 0;
        for (int i = 0; i < m; i++) z += exp(c[i].l - c[0].l);
        int j = 0;
        while (j < m) {
            cum += exp(c[j].l - c[0].l) / z;
            j++;
            if (cum >= top_p) break;
        }
        m = j;
    }
    if (min_p > 0) {
        int j = 0;
        while (j < m && exp(c[j].l - c[0].l) >= min_p) j++;
        m = j;
    }
    for (int i = 0; i < m; i++) out[i] = c[i].id;
    qsort(out, (size_t)m, sizeof *out, cmp_int);
    free(c);
    return m;
}

/* Reference typical-p: sort by |surprisal - entropy|, keep until mass >= p. */
typedef struct { double key, p; int id; } ref_t;
static int by_key(const void *a, const void *b)
{
    const ref_t *x = a, *y = b;
    return (x->key > y->key) - (x->key < y->key);
}
static int ref_typical(const float *l, int n, double tp, int *out)
{
    ref_t *c = malloc(sizeof *c * (size_t)n);
    double mx = l[0], z = 0, h = 0;
    for (int i = 1; i < n; i++) if (l[i] > mx) mx = l[i];
    for (int i = 0; i < n; i++) z += exp(l[i] - mx);
    for (int i = 0; i < n; i++) {
        double p = exp(l[i] - mx) / z;
        c[i] = (ref_t){0, p, i};
        if (p > 0) h -= p * log(p);
    }
    for (int i = 0; i < n; i++) c[i].key = fabs(-log(c[i].p) - h);
    qsort(c, (size_t)n, sizeof *c, by_key);
    double cum = 0;
    int m = 0;
    while (m < n) { cum += c[m].p; m++; if (cum >= tp) break; }
    for (int i = 0; i < m; i++) out[i] = c[i].id;
    qsort(out, (size_t)m, sizeof *out, cmp_int);
    free(c);
    return m;
}

static int same_set(const int32_t *a, size_t na, const int *b, int nb)
{
    if ((int)na != nb) return 0;
    for (int i = 0; i < nb; i++) if (a[i] != b[i]) return 0;
    return 1;
}

/* ---- tests ---- */

static void test_math(void)
{
    double worst = 0;
    for (double x = -745; x <= 0; x += 0.0371) {
        double want = exp(x), got = sample_exp(x);
        if (want > 1e-300) {
            double e = fabs(got - want) / want;
            if (e > worst) worst = e;
        }
    }
    ok(worst < 1e-15, "sample_exp matches libm exp on [-745, 0] (worst rel err %.2g)", worst);
    ok(sample_exp(-800) == 0 && sample_exp(0) == 1, "sample_exp(-800) = 0, exp(0) = 1");
    worst = 0;
    for (double x = 1e-300; x < 1e300; x *= 1.9) {
        double e = fabs(sample_log(x) - log(x)) / fmax(fabs(log(x)), 1e-300);
        if (e > worst) worst = e;
    }
    for (double x = 0.5; x < 2; x += 0.001) {
        double e = fabs(sample_log(x) - log(x));
        if (e > worst) worst = e;
    }
    ok(worst < 1e-15, "sample_log matches libm log (worst err %.2g)", worst);
}

static void test_rng(void)
{
    sample_rng a, b, c;
    sample_rng_seed(&a, 42);
    sample_rng_seed(&b, 42);
    sample_rng_seed(&c, 43);
    int same = 1, diff = 0;
    double sum = 0;
    for (int i = 0; i < 100000; i++) {
        uint64_t x = sample_rng_next(&a), y = sample_rng_next(&b), z = sample_rng_next(&c);
        same &= x == y;
        diff += x != z;
    }
    ok(same, "same seed, same stream");
    ok(diff > 99990, "different seed, different stream");
    sample_rng_seed(&a, 7);
    int in = 1;
    for (int i = 0; i < 100000; i++) {
        double u = sample_rng_uniform(&a);
        in &= u >= 0 && u < 1;
        sum += u;
    }
    /* mean of 1e5 uniforms: sd = sqrt(1/12/1e5) = 9.1e-4 */
    ok(in && fabs(sum / 100000 - 0.5) < 3 * 9.2e-4, "uniform in [0,1), mean %.4f", sum / 100000);
}

/* Filters against the sort-based reference on random logits. */
static void test_filters_vs_sort(void)
{
    enum { N = 3000 };
    static float l[N];
    static int32_t got[N];
    static int want[N];
    int agree_k = 1, agree_p = 1, agree_min = 1, agree_all = 1, agree_typ = 1;
    for (int trial = 0; trial < 20; trial++) {
        double scale = 0.5 + 4 * lcg_uniform();
        for (int i = 0; i < N; i++) l[i] = (float)(scale * (lcg_uniform() * 6 - 3));
        static const int ks[] = {1, 2, 40, 1000, N - 1};
        static const double ps[] = {0.01, 0.3, 0.9, 0.999};
        static const double mps[] = {0.001, 0.05, 0.5};
        sample_params p;
        for (int i = 0; i < 5; i++) {
            sample_params_default(&p);
            p.top_k = ks[i];
            sampler *s = sample_new(&p, N);
            agree_k &= same_set(got, sample_kept(s, l, got), want, ref_kept(l, N, ks[i], 1, 0, want));
            sample_free(s);
        }
        for (int i = 0; i < 4; i++) {
            sample_params_default(&p);
            p.top_p = ps[i];
            sampler *s = sample_new(&p, N);
            agree_p &= same_set(got, sample_kept(s, l, got), want, ref_kept(l, N, 0, ps[i], 0, want));
            sample_free(s);
        }
        for (int i = 0; i < 3; i++) {
            sample_params_default(&p);
            p.min_p = mps[i];
            sampler *s = sample_new(&p, N);
            agree_min &= same_set(got, sample_kept(s, l, got), want, ref_kept(l, N, 0, 1, mps[i], want));
            sample_free(s);
        }
        sample_params_default(&p);
        p.top_k = 500; p.top_p = 0.8; p.min_p = 0.02;
        sampler *s = sample_new(&p, N);
        agree_all &= same_set(got, sample_kept(s, l, got), want, ref_kept(l, N, 500, 0.8, 0.02, want));
        sample_free(s);
        sample_params_default(&p);
        p.typical_p = 0.2 + 0.7 * lcg_uniform();
        s = sample_new(&p, N);
        agree_typ &= same_set(got, sample_kept(s, l, got), want, ref_typical(l, N, p.typical_p, want));
        sample_free(s);
    }
    ok(agree_k, "top-k keeps the same ids as a full sort (20 random vectors x 5 k)");
    ok(agree_p, "top-p keeps the same ids as a full sort (20 x 4 p)");
    ok(agree_min, "min-p keeps the same ids as a full sort (20 x 3 p)");
    ok(agree_all, "top-k 500 + top-p 0.8 + min-p 0.02 chained as a full sort does");
    ok(agree_typ, "typical-p keeps the same ids as a full sort by |surprisal - entropy|");

    /* Many ties (logits on a grid of 0.25), large n (the histogram path): top-k keeps
     * exactly k ids and never drops an id larger than one it keeps. */
    {
        enum { NT = 5000 };
        static float q[NT];
        static int32_t kept[NT];
        static char in[NT];
        for (int i = 0; i < NT; i++) q[i] = (float)(floor(lcg_uniform() * 24) * 0.25);
        int good = 1;
        static const int kk[] = {1, 7, 100, 2500, 4999};
        for (int t = 0; t < 5; t++) {
            sample_params p;
            sample_params_default(&p);
            p.top_k = kk[t];
            sampler *s = sample_new(&p, NT);
            size_t m = sample_kept(s, q, kept);
            sample_free(s);
            memset(in, 0, sizeof in);
            float lo = 1e30f, hi = -1e30f;
            for (size_t i = 0; i < m; i++) { in[kept[i]] = 1; if (q[kept[i]] < lo) lo = q[kept[i]]; }
            for (int i = 0; i < NT; i++) if (!in[i] && q[i] > hi) hi = q[i];
            good &= m == (size_t)kk[t] && lo >= hi;
        }
        ok(good, "top-k on 5000 tied logits: exactly k kept, none dropped above a kept one");
    }

    /* All logits equal: top-k keeps exactly k, top-p keeps ceil(p n). */
    for (int i = 0; i < 100; i++) l[i] = 1.5f;
    sample_params p;
    sample_params_default(&p);
    p.top_k = 7;
    sampler *s = sample_new(&p, 100);
    ok(sample_kept(s, l, got) == 7, "top-k 7 on 100 equal logits keeps 7");
    sample_free(s);
    sample_params_default(&p);
    p.top_p = 0.255;
    s = sample_new(&p, 100);
    ok(sample_kept(s, l, got) == 26, "top-p 0.255 on 100 equal logits keeps 26");
    sample_free(s);
}

/* Draw n ids, counting them. */
static void draw(const sample_params *p, const float *l, int nv, int n, int *cnt)
{
    sampler *s = sample_new(p, nv);
    memset(cnt, 0, sizeof(int) * (size_t)nv);
    for (int i = 0; i < n; i++) {
        int32_t id = sample_next(s, l);
        if (id >= 0 && id < nv) cnt[id]++;
    }
    sample_free(s);
}

/* Frequencies within 3 standard errors of probs (renormalised over mask). */
static int freq_match(const int *cnt, const float *l, double t, const int *mask, int nv, int n,
                      double *worst_z)
{
    double mx = -1e300, z = 0;
    for (int i = 0; i < nv; i++) if (mask[i] && l[i] > mx) mx = l[i];
    for (int i = 0; i < nv; i++) if (mask[i]) z += exp((l[i] - mx) / t);
    int good = 1;
    *worst_z = 0;
    for (int i = 0; i < nv; i++) {
        double pr = mask[i] ? exp((l[i] - mx) / t) / z : 0;
        double f = (double)cnt[i] / n, se = sqrt(pr * (1 - pr) / n);
        if (pr == 0) { good &= cnt[i] == 0; continue; }
        double zz = fabs(f - pr) / se;
        if (zz > *worst_z) *worst_z = zz;
        good &= zz <= 3;
    }
    return good;
}

static void test_frequencies(void)
{
    enum { NV = 8, DRAWS = 20000 };
    static const float l[NV] = {1.0f, 2.0f, 0.5f, -1.0f, 2.5f, 0.0f, 1.7f, -3.0f};
    int cnt[NV], all[NV], mask[NV];
    double wz;
    sample_params p;
    for (int i = 0; i < NV; i++) all[i] = 1;

    sample_params_default(&p);
    p.seed = 2024;
    draw(&p, l, NV, DRAWS, cnt);
    {
       int g = freq_match(cnt, l, 1.0, all, NV, DRAWS, &wz);
       ok(g, "temperature 1: 20000 draws match softmax within 3 SE (worst %.2f SE)", wz);
       }

    p.temperature = 0.6;
    draw(&p, l, NV, DRAWS, cnt);
    {
       int g = freq_match(cnt, l, 0.6, all, NV, DRAWS, &wz);
       ok(g, "temperature 0.6: 20000 draws match softmax(l/0.6) within 3 SE (worst %.2f SE)", wz);
       }

    /* top-k 3 keeps ids 4, 1, 6 */
    sample_params_default(&p);
    p.seed = 99;
    p.top_k = 3;
    draw(&p, l, NV, DRAWS, cnt);
    for (int i = 0; i < NV; i++) mask[i] = i == 4 || i == 1 || i == 6;
    {
       int g = freq_match(cnt, l, 1.0, mask, NV, DRAWS, &wz);
       ok(g, "top-k 3: only ids 4,1,6, at renormalised softmax within 3 SE (worst %.2f)", wz);
       }

    /* top-p 0.7: softmax(l) sorted is .395 (id 4) .240 (1) .178 (6) .088 (0) ...:
     * .395 + .240 = .635 < .7, + .178 = .812 >= .7 -> keep 4, 1, 6 */
    sample_params_default(&p);
    p.seed = 5;
    p.top_p = 0.7;
    draw(&p, l, NV, DRAWS, cnt);
    {
       int g = freq_match(cnt, l, 1.0, mask, NV, DRAWS, &wz);
       ok(g, "top-p 0.7: only ids 4,1,6 within 3 SE (worst %.2f)", wz);
       }

    /* min-p 0.3: keep p >= 0.3 p_max <=> l >= 2.5 + ln 0.3 = 1.296: ids 4, 1, 6 */
    sample_params_default(&p);
    p.seed = 6;
    p.min_p = 0.3;
    p.temperature = 1.3;
    draw(&p, l, NV, DRAWS, cnt);
    {
       int g = freq_match(cnt, l, 1.3, mask, NV, DRAWS, &wz);
       ok(g, "min-p 0.3 then temperature 1.3: only ids 4,1,6 at softmax(l/1.3) (worst %.2f)", wz);
       }

    /* logit bias -inf bans id 4; +10 on id 7 makes it dominant */
    sample_params_default(&p);
    p.seed = 7;
    int32_t bid[2] = {4, 7};
    double bval[2] = {-HUGE_VAL, 0.8};
    p.bias_ids = bid;
    p.bias_vals = bval;
    p.n_bias = 2;
    draw(&p, l, NV, DRAWS, cnt);
    float lb[NV];
    memcpy(lb, l, sizeof lb);
    lb[7] = -2.2f;
    for (int i = 0; i < NV; i++) mask[i] = i != 4;
    {
       int g = freq_match(cnt, lb, 1.0, mask, NV, DRAWS, &wz);
       ok(g, "logit-bias 4=-inf 7=+0.8: id 4 never drawn, others at biased softmax (worst %.2f)", wz);
       }
    p.greedy = 1;
    sampler *s = sample_new(&p, NV);
    ok(sample_next(s, l) == 1, "greedy after banning the argmax picks the runner-up");
    sample_free(s);

    /* seeded reproducibility through the whole chain */
    sample_params_default(&p);
    p.seed = 77; p.top_k = 6; p.top_p = 0.95; p.min_p = 0.01; p.typical_p = 0.97;
    p.temperature = 0.8;
    sampler *a = sample_new(&p, NV), *b = sample_new(&p, NV);
    int same = 1;
    for (int i = 0; i < 1000; i++) same &= sample_next(a, l) == sample_next(b, l);
    ok(same, "same seed and logits: same 1000 ids through the full chain");
    sample_free(a);
    sample_free(b);
}

static void test_greedy(void)
{
    float l[6] = {0.1f, 3.0f, -1.0f, 3.0f, 2.0f, 3.0f};
    sample_params p;
    sample_params_default(&p);
    p.greedy = 1;
    sampler *s = sample_new(&p, 6);
    ok(sample_next(s, l) == 1, "greedy: lowest id among tied maxima (torch.argmax order)");
    sample_free(s);
    sample_params_default(&p);
    p.temperature = 0;
    s = sample_new(&p, 6);
    l[4] = 9;
    ok(sample_next(s, l) == 4, "temperature 0 is argmax");
    sample_free(s);
}

static void test_penalties(void)
{
    enum { NV = 10 };
    const float l[NV] = {2.0f, -1.0f, 0.5f, 3.0f, -2.0f, 1.0f, 0.0f, 4.0f, -0.5f, 1.5f};
    float out[NV];
    sample_params p;
    sample_params_default(&p);
    p.repeat_penalty = 2.0;
    p.presence_penalty = 0.25;
    p.frequency_penalty = 0.125;
    p.repeat_last_n = 4;
    sampler *s = sample_new(&p, NV);
    /* context 7 1 1 3 8 3 99(-out of vocab): window of 4 = 3 8 3 99 */
    int32_t ctx[] = {7, 1, 1, 3, 8, 3, 99};
    sample_accept(s, ctx, 7);
    sample_prepare(s, l, out);
    float want[NV];
    memcpy(want, l, sizeof want);
    want[3] = (float)(3.0 / 2 - 2 * 0.125 - 0.25);     /* positive: divided; count 2 */
    want[8] = (float)(-0.5 * 2 - 1 * 0.125 - 0.25);    /* negative: multiplied; count 1 */
    int exact = 1;
    for (int i = 0; i < NV; i++) exact &= out[i] == want[i];
    ok(exact, "penalties change exactly ids 3 and 8 (window 4 of 7 1 1 3 8 3 99) by formula");

    sample_truncate(s, 3);                            /* context 7 1 1 */
    sample_prepare(s, l, out);
    memcpy(want, l, sizeof want);
    want[7] = (float)(4.0 / 2 - 0.125 - 0.25);
    want[1] = (float)(-1.0 * 2 - 2 * 0.125 - 0.25);
    exact = 1;
    for (int i = 0; i < NV; i++) exact &= out[i] == want[i];
    ok(exact, "after truncating to 3 ids, exactly ids 7 and 1 are penalised");
    sample_free(s);

    p.repeat_last_n = -1;
    s = sample_new(&p, NV);
    sample_accept(s, ctx, 7);
    sample_prepare(s, l, out);
    int changed = 0;
    for (int i = 0; i < NV; i++) changed |= (out[i] != l[i]) << i;
    ok(changed == ((1 << 7) | (1 << 1) | (1 << 3) | (1 << 8)),
       "repeat-last-n -1: every context id (7 1 3 8) penalised, nothing else");
    sample_free(s);

    p.repeat_last_n = 0;
    s = sample_new(&p, NV);
    sample_accept(s, ctx, 7);
    sample_prepare(s, l, out);
    ok(!memcmp(out, l, sizeof out), "repeat-last-n 0: no penalty");
    sample_free(s);

    /* sliding window one id at a time equals the batch result */
    p.repeat_last_n = 3;
    sampler *a = sample_new(&p, NV), *b = sample_new(&p, NV);
    float oa[NV], ob[NV];
    int eq = 1;
    for (int i = 0; i < 7; i++) {
        sample_accept(a, &ctx[i], 1);
        sample_free(b);
        b = sample_new(&p, NV);
        sample_accept(b, ctx, (size_t)i + 1);
        sample_prepare(a, l, oa);
        sample_prepare(b, l, ob);
        eq &= !memcmp(oa, ob, sizeof oa);
    }
    ok(eq, "window slid one id at a time equals the window of the whole context");
    sample_free(a);
    sample_free(b);

    /* greedy with a repeat penalty avoids the repeated argmax */
    sample_params_default(&p);
    p.greedy = 1;
    p.repeat_penalty = 3.0;
    s = sample_new(&p, NV);
    int32_t seven = 7;
    sample_accept(s, &seven, 1);
    ok(sample_next(s, l) == 3, "greedy + repeat penalty 3: 4/3 < 3, picks id 3 over id 7");
    sample_free(s);
}

static void test_params(void)
{
    sample_params p;
    sample_params_default(&p);
    ok(sample_params_check(&p) == NULL, "defaults are valid");
    p.temperature = -0.1;
    ok(sample_params_check(&p) != NULL, "temperature < 0 rejected");
    sample_params_default(&p);
    p.top_p = 0;
    ok(sample_params_check(&p) != NULL, "top-p 0 rejected");
    p.top_p = 1.01;
    ok(sample_params_check(&p) != NULL, "top-p 1.01 rejected");
    p.top_p = NAN;
    ok(sample_params_check(&p) != NULL, "top-p NaN rejected");
    sample_params_default(&p);
    p.min_p = -0.5;
    ok(sample_params_check(&p) != NULL, "min-p < 0 rejected");
    sample_params_default(&p);
    p.repeat_penalty = 0;
    ok(sample_params_check(&p) != NULL, "repeat-penalty 0 rejected");

    int32_t *ids;
    size_t n;
    char err[200];
    ok(sample_parse_ids("32000,32001,32007", &ids, &n, err, sizeof err) == 0 && n == 3 &&
           ids[0] == 32000 && ids[2] == 32007, "stop list 32000,32001,32007 parses");
    free(ids);
    static const char *bad[] = {"", ",", "1,", ",1", "1,,2", "a", "1;2", "-3", "1 2",
                                "99999999999", "3.5"};
    int all_bad = 1;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        all_bad &= sample_parse_ids(bad[i], &ids, &n, err, sizeof err) == -1 && ids == NULL;
    ok(all_bad, "malformed stop lists rejected (empty, dangling comma, junk, negative, huge)");
}

int main(void)
{
    test_math();
    test_rng();
    test_filters_vs_sort();
    test_frequencies();
    test_greedy();
    test_penalties();
    test_params();
    printf("1..%d\n", n_test);
    return n_fail ? 1 : 0;
}
