/* sampler.c: the sampling chain of sampler.h in O(n_vocab) per token (partial selection
 * instead of a sort), with a seeded xoshiro256** and our own exp/log for reproducibility. */
#include "sample/sampler.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "shared/util.h"

enum { HIST_BUCKETS = 2048 };

/* One candidate token. key orders the candidates for a selection, w weighs them. */
typedef struct cand {
    double key, w;
    float logit;
    int32_t id;
} cand;

struct sampler {
    sample_params p;
    int32_t *bias_ids;
    double *bias_vals;
    int n_vocab;
    int32_t *hist;            /* context ids, oldest first */
    size_t n_hist, cap_hist;
    size_t win;               /* first index of the penalty window in hist */
    int *count;               /* occurrences of each id inside the window */
    int penalize;             /* any penalty active */
    float *work;              /* n_vocab: prepared logits */
    cand *c;                  /* n_vocab candidates */
    cand *tmp;                /* n_vocab: scratch for select_hist */
    uint16_t *bucket;         /* n_vocab: histogram bucket of each candidate */
    double *hw;               /* HIST_BUCKETS weights */
    sample_rng rng;
};

/* ---- reproducible arithmetic ---- */

static uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

void sample_rng_seed(sample_rng *r, uint64_t seed)
{
    /* splitmix64 never yields four zero words, the one state xoshiro cannot leave. */
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

uint64_t sample_rng_next(sample_rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl64(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return out;
}

double sample_rng_uniform(sample_rng *r)
{
    return (double)(sample_rng_next(r) >> 11) * 0x1p-53;
}

/* ln 2 split so that k * LN2_HI is exact for |k| < 2^20. */
static const double LN2_HI = 0x1.62e42feep-1, LN2_LO = 0x1.a39ef35793c76p-33;

/* 2^k as a double, for -1074 <= k <= 1023, built from its bits (exact). */
static double pow2i(int k)
{
    uint64_t bits;
    if (k >= -1022) bits = (uint64_t)(k + 1023) << 52;
    else bits = (uint64_t)1 << (k + 1074);          /* subnormal */
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

double sample_exp(double x)
{
    if (x != x) return x;
    if (x < -746.0) return 0.0;
    if (x > 709.0) return HUGE_VAL;
    /* x = k ln2 + r, |r| <= ln2/2. Adding 1.5*2^52 rounds x/ln2 to the nearest integer k
     * (default rounding mode) and leaves k in the low bits: no libm call, no branch. */
    double t = x * 1.4426950408889634 + 0x1.8p52, kd = t - 0x1.8p52;
    uint64_t tb;
    memcpy(&tb, &t, sizeof tb);
    int k = (int)(int32_t)(uint32_t)tb;
    double r = (x - kd * LN2_HI) - kd * LN2_LO;
    /* Taylor to r^13 (below 2e-16 relative for |r| <= ln2/2), Estrin's scheme so the
     * multiplies of one call overlap. */
    double r2 = r * r, r4 = r2 * r2, r8 = r4 * r4;
    double a0 = 1.0 + r, a1 = 1.0 / 2 + r * (1.0 / 6), a2 = 1.0 / 24 + r * (1.0 / 120),
           a3 = 1.0 / 720 + r * (1.0 / 5040), a4 = 1.0 / 40320 + r * (1.0 / 362880),
           a5 = 1.0 / 3628800 + r * (1.0 / 39916800),
           a6 = 1.0 / 479001600 + r * (1.0 / 6227020800.0);
    double p = (a0 + a1 * r2) + (a2 + a3 * r2) * r4 + ((a4 + a5 * r2) + a6 * r4) * r8;
    /* p in [0.7, 1.42]: one rounding into the result, as ldexp would, even when 2^k
     * or the result is subnormal. */
    if (k >= -1021) return p * pow2i(k);
    return (p * pow2i(k + 60)) * pow2i(-60);
}

double sample_log(double x)
{
    int e;
    double m = frexp(x, &e);                    /* x = m 2^e, m in [0.5, 1) */
    if (m < 0.70710678118654752) { m *= 2; e--; }
    /* log m = 2 atanh(t), t = (m-1)/(m+1), |t| <= 0.172: 11 odd terms reach 1e-17. */
    double t = (m - 1) / (m + 1), t2 = t * t, sum = 0;
    for (int i = 21; i >= 1; i -= 2) sum = sum * t2 + 1.0 / i;
    return 2 * t * sum + e * LN2_LO + e * LN2_HI;
}

/* ---- parameters ---- */

void sample_params_default(sample_params *p)
{
    memset(p, 0, sizeof *p);
    p->temperature = 1.0;
    p->typical_p = 1.0;
    p->top_p = 1.0;
    p->repeat_penalty = 1.0;
    p->repeat_last_n = 64;
}

const char *sample_params_check(const sample_params *p)
{
    if (!(p->temperature >= 0) || isinf(p->temperature))
        return "temperature must be a finite number >= 0";
    if (p->top_k < 0) return "top-k must be >= 0";
    if (!(p->top_p > 0 && p->top_p <= 1)) return "top-p must be in (0, 1]";
    if (!(p->typical_p > 0 && p->typical_p <= 1)) return "typical-p must be in (0, 1]";
    if (!(p->min_p >= 0 && p->min_p <= 1)) return "min-p must be in [0, 1]";
    /* R and 1/R must both be float32 numbers: l/R and l*R of a finite logit may still
     * overflow to an infinite logit, which the chain handles (an infinite logit is a
     * certainty), but the parameters themselves are never infinite. */
    if (!(p->repeat_penalty >= FLT_MIN && p->repeat_penalty <= FLT_MAX))
        return "repeat-penalty must be in [1.2e-38, 3.4e38]";
    if (!(fabs(p->presence_penalty) <= FLT_MAX)) return "presence-penalty must be in [-3.4e38, 3.4e38]";
    if (!(fabs(p->frequency_penalty) <= FLT_MAX)) return "frequency-penalty must be in [-3.4e38, 3.4e38]";
    if (p->repeat_last_n < -1) return "repeat-last-n must be >= -1";
    if (p->id_limit < 0) return "id limit must be >= 0";
    for (size_t i = 0; i < p->n_bias; i++) {
        if (p->bias_ids[i] < 0) return "logit-bias id must be >= 0";
        if (!(fabs(p->bias_vals[i]) <= FLT_MAX) && p->bias_vals[i] != -HUGE_VAL)
            return "logit-bias value must be in [-3.4e38, 3.4e38] or -inf";
    }
    return NULL;
}

/* ---- context and penalties ---- */

static int in_vocab(const sampler *s, int32_t id) { return id >= 0 && id < s->n_vocab; }

/* Recount the window from scratch (after a truncation). */
static void window_rebuild(sampler *s)
{
    if (!s->penalize) return;
    memset(s->count, 0, sizeof(int) * (size_t)s->n_vocab);
    size_t n = s->p.repeat_last_n < 0 ? s->n_hist : (size_t)s->p.repeat_last_n;
    s->win = s->n_hist > n ? s->n_hist - n : 0;
    for (size_t i = s->win; i < s->n_hist; i++)
        if (in_vocab(s, s->hist[i])) s->count[s->hist[i]]++;
}

sampler *sample_new(const sample_params *p, int n_vocab)
{
    sampler *s = xcalloc(1, sizeof *s);
    s->p = *p;
    s->n_vocab = n_vocab;
    if (p->n_bias) {
        s->bias_ids = xmalloc(sizeof(int32_t) * p->n_bias);
        s->bias_vals = xmalloc(sizeof(double) * p->n_bias);
        memcpy(s->bias_ids, p->bias_ids, sizeof(int32_t) * p->n_bias);
        memcpy(s->bias_vals, p->bias_vals, sizeof(double) * p->n_bias);
    }
    s->p.bias_ids = s->bias_ids;
    s->p.bias_vals = s->bias_vals;
    s->penalize = p->repeat_last_n != 0 &&
                  (p->repeat_penalty != 1.0 || p->presence_penalty != 0.0 ||
                   p->frequency_penalty != 0.0);
    if (s->penalize) s->count = xcalloc((size_t)n_vocab, sizeof(int));
    s->work = xmalloc(sizeof(float) * (size_t)n_vocab);
    s->c = xmalloc(sizeof(cand) * (size_t)n_vocab);
    s->tmp = xmalloc(sizeof(cand) * (size_t)n_vocab);
    s->bucket = xmalloc(sizeof(uint16_t) * (size_t)n_vocab);
    s->hw = xmalloc(sizeof(double) * HIST_BUCKETS);
    sample_rng_seed(&s->rng, p->seed);
    return s;
}

void sample_free(sampler *s)
{
    if (!s) return;
    free(s->bias_ids);
    free(s->bias_vals);
    free(s->hist);
    free(s->count);
    free(s->work);
    free(s->c);
    free(s->tmp);
    free(s->bucket);
    free(s->hw);
    free(s);
}

void sample_accept(sampler *s, const int32_t *ids, size_t n)
{
    if (s->n_hist + n > s->cap_hist) {
        s->cap_hist = (s->n_hist + n) + (s->n_hist + n) / 2 + 64;
        s->hist = xrealloc(s->hist, sizeof(int32_t) * s->cap_hist);
    }
    for (size_t i = 0; i < n; i++) {
        s->hist[s->n_hist++] = ids[i];
        if (!s->penalize) continue;
        if (in_vocab(s, ids[i])) s->count[ids[i]]++;
        if (s->p.repeat_last_n > 0 && s->n_hist - s->win > (size_t)s->p.repeat_last_n) {
            int32_t old = s->hist[s->win++];
            if (in_vocab(s, old)) s->count[old]--;
        }
    }
}

void sample_truncate(sampler *s, size_t n)
{
    if (n < s->n_hist) {
        s->n_hist = n;
        window_rebuild(s);
    }
}

size_t sample_context_len(const sampler *s) { return s->n_hist; }

void sample_prepare(sampler *s, const float *logits, float *out)
{
    int nv = s->n_vocab;
    memcpy(out, logits, sizeof(float) * (size_t)nv);
    /* A sum that overflows float32 becomes an infinite logit: +inf is a certainty, -inf
     * a ban (see filter). -inf bans even a +inf logit (inf + -inf would be NaN). */
    for (size_t i = 0; i < s->p.n_bias; i++)
        if (in_vocab(s, s->p.bias_ids[i])) {
            float *l = &out[s->p.bias_ids[i]];
            *l = s->p.bias_vals[i] == -HUGE_VAL ? -HUGE_VALF : (float)(*l + s->p.bias_vals[i]);
        }
    for (int i = s->p.id_limit > 0 ? s->p.id_limit : nv; i < nv; i++) out[i] = -HUGE_VALF;
    if (!s->penalize) return;
    double rp = s->p.repeat_penalty, pp = s->p.presence_penalty, fp = s->p.frequency_penalty;
    for (int i = 0; i < nv; i++) {
        int c = s->count[i];
        if (c <= 0) continue;
        double l = out[i];
        if (isinf(l)) continue;               /* banned stays banned, certain stays certain */
        l = l > 0 ? l / rp : l * rp;
        l -= c * fp + pp;
        out[i] = (float)l;
    }
}

/* ---- selection ---- */

static void cswap(cand *a, cand *b) { cand t = *a; *a = *b; *b = t; }

static double median3(double a, double b, double c)
{
    if (a > b) { double t = a; a = b; b = t; }
    if (b > c) b = c;
    return a > b ? a : b;
}

/* Reorder c[0..n) so that its first m elements are the smallest prefix, in ascending key
 * order, whose weights add up to >= need (all n if they never do; at least 1); return m.
 * Quickselect with a three-way partition: expected O(n), no sort. Which of several equal
 * keys at the boundary is kept depends only on this code, so it is deterministic. */
static size_t select_prefix(cand *c, size_t n, double need)
{
    size_t lo = 0, hi = n;
    if (need <= 0) return n ? 1 : 0;
    while (lo < hi) {
        double piv = median3(c[lo].key, c[lo + (hi - lo) / 2].key, c[hi - 1].key);
        size_t lt = lo, i = lo, gt = hi;
        while (i < gt) {                         /* [lo,lt) < piv, [lt,i) == piv, [gt,hi) > piv */
            if (c[i].key < piv) cswap(&c[lt++], &c[i++]);
            else if (c[i].key > piv) cswap(&c[i], &c[--gt]);
            else i++;
        }
        double mass = 0;
        for (size_t j = lo; j < lt; j++) mass += c[j].w;
        if (mass >= need && lt > lo) { hi = lt; continue; }
        need -= mass;
        for (size_t j = lt; j < gt; j++) {
            need -= c[j].w;
            if (need <= 0) return j + 1 > 1 ? j + 1 : 1;
        }
        lo = gt;
    }
    return lo ? lo : (n ? 1 : 0);
}

/* select_prefix in two linear passes without moving most candidates: a histogram of the
 * keys (bucket = a monotone function of key, so every key of a lower bucket is smaller)
 * finds the bucket where the mass crosses need; the buckets below are kept whole and
 * only that bucket goes through the quickselect. Same result as select_prefix. */
static size_t select_hist(sampler *s, cand *c, size_t n, double need)
{
    if (n < 512 || need <= 0) return select_prefix(c, n, need);
    double lo = c[0].key, hi = c[0].key;
    for (size_t i = 1; i < n; i++) {
        if (c[i].key < lo) lo = c[i].key;
        if (c[i].key > hi) hi = c[i].key;
    }
    double scale = (HIST_BUCKETS - 1) / (hi - lo);
    /* Infinite keys (never from filter, which settles infinite logits first) would make
     * the bucket index NaN: the quickselect needs no buckets. */
    if (!(hi > lo) || !isfinite(lo) || !isfinite(hi) || !isfinite(scale) || !(scale > 0))
        return select_prefix(c, n, need);
    double *h = s->hw;
    memset(h, 0, sizeof(double) * HIST_BUCKETS);
    for (size_t i = 0; i < n; i++) {
        double bd = (c[i].key - lo) * scale;
        int b = bd >= HIST_BUCKETS - 1 ? HIST_BUCKETS - 1 : bd > 0 ? (int)bd : 0;
        s->bucket[i] = (uint16_t)b;
        h[b] += c[i].w;
    }
    double cum = 0;
    int bs = 0;
    while (bs < HIST_BUCKETS && !(cum + h[bs] >= need)) cum += h[bs++];
    if (bs == HIST_BUCKETS) return n;             /* never reaches need: keep all */
    size_t m0 = 0, m1 = 0;
    for (size_t i = 0; i < n; i++)                /* kept in front, boundary at the back */
        if (s->bucket[i] < bs) s->tmp[m0++] = c[i];
        else if (s->bucket[i] == bs) s->tmp[n - 1 - m1++] = c[i];
    memmove(s->tmp + m0, s->tmp + n - m1, sizeof(cand) * m1);   /* regions may overlap */
    size_t k = select_prefix(s->tmp + m0, m1, need - cum);
    memcpy(c, s->tmp, sizeof(cand) * (m0 + k));
    return m0 + k;
}

/* w = softmax(logit) over c[0..n) (temperature 1); returns log of the normaliser
 * relative to the max logit, and the max in *mx. */
static double softmax(cand *c, size_t n, double *mx)
{
    double m = c[0].logit, sum = 0;
    for (size_t i = 1; i < n; i++)
        if (c[i].logit > m) m = c[i].logit;
    for (size_t i = 0; i < n; i++) sum += c[i].w = sample_exp(c[i].logit - m);
    for (size_t i = 0; i < n; i++) c[i].w /= sum;
    *mx = m;
    return sample_log(sum);
}

/* Candidates after bias, penalties and the filters; returns how many (0: all banned). */
static size_t filter(sampler *s, const float *logits)
{
    sample_prepare(s, logits, s->work);
    size_t n = 0;
    for (int i = 0; i < s->n_vocab; i++)
        if (s->work[i] != -HUGE_VALF)
            s->c[n++] = (cand){.logit = s->work[i], .id = i};
    if (n == 0) return 0;
    cand *c = s->c;
    /* +inf logits (in the frame, or from a bias or penalty that overflowed float32)
     * take all the probability: the candidates are those ids, equally likely (the limit
     * of softmax); top-k keeps the K lowest of them, the other filters keep them all. */
    size_t ninf = 0;
    for (size_t i = 0; i < n; i++)
        if (c[i].logit == HUGE_VALF) c[ninf++] = c[i];
    if (ninf > 0) {
        if (s->p.top_k > 0 && (size_t)s->p.top_k < ninf) ninf = (size_t)s->p.top_k;
        for (size_t i = 0; i < ninf; i++) c[i].logit = 0;
        return ninf;
    }
    double mx;
    if (s->p.top_k > 0 && (size_t)s->p.top_k < n) {
        for (size_t i = 0; i < n; i++) { c[i].key = -(double)c[i].logit; c[i].w = 1; }
        n = select_hist(s, c, n, s->p.top_k);
    }
    if (s->p.typical_p < 1.0 && n > 1) {
        /* Locally typical: keep the ids whose surprisal -log p is closest to the
         * entropy H, until their mass reaches typical_p. */
        double lse = softmax(c, n, &mx), h = 0;
        for (size_t i = 0; i < n; i++) {
            double lp = (c[i].logit - mx) - lse;
            c[i].key = lp;
            if (c[i].w > 0) h -= c[i].w * lp;
        }
        for (size_t i = 0; i < n; i++) c[i].key = fabs(-c[i].key - h);
        n = select_hist(s, c, n, s->p.typical_p);
    }
    if (s->p.top_p < 1.0 && n > 1) {
        softmax(c, n, &mx);
        for (size_t i = 0; i < n; i++) c[i].key = -(double)c[i].logit;
        n = select_hist(s, c, n, s->p.top_p);
    }
    if (s->p.min_p > 0.0 && n > 1) {
        /* p_i >= min_p * p_max  <=>  exp(l_i - l_max) >= min_p; keeps the max itself. */
        mx = c[0].logit;
        for (size_t i = 1; i < n; i++)
            if (c[i].logit > mx) mx = c[i].logit;
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (sample_exp(c[i].logit - mx) >= s->p.min_p) c[k++] = c[i];
        n = k;
    }
    return n;
}

static int32_t argmax(const float *l, int n)
{
    int32_t best = -1;
    for (int i = 0; i < n; i++)
        if (l[i] != -HUGE_VALF && (best < 0 || l[i] > l[best])) best = i;
    return best;
}

int32_t sample_next(sampler *s, const float *logits)
{
    if (s->p.greedy || s->p.temperature == 0.0) {
        sample_prepare(s, logits, s->work);
        return argmax(s->work, s->n_vocab);
    }
    size_t n = filter(s, logits);
    if (n == 0) return -1;
    cand *c = s->c;
    double mx = c[0].logit, sum = 0, t = s->p.temperature;
    for (size_t i = 1; i < n; i++)
        if (c[i].logit > mx) mx = c[i].logit;
    for (size_t i = 0; i < n; i++) sum += c[i].w = sample_exp((c[i].logit - mx) / t);
    /* Always one draw per token, so the stream of draws depends only on the seed and
     * the number of tokens sampled so far. */
    double u = sample_rng_uniform(&s->rng) * sum, acc = 0;
    for (size_t i = 0; i < n; i++) {
        acc += c[i].w;
        if (u < acc) return c[i].id;
    }
    for (size_t i = n; i-- > 0;)              /* rounding left u just above acc */
        if (c[i].w > 0) return c[i].id;
    return c[n - 1].id;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

size_t sample_kept(sampler *s, const float *logits, int32_t *ids)
{
    size_t n = filter(s, logits);
    for (size_t i = 0; i < n; i++) ids[i] = s->c[i].id;
    qsort(ids, n, sizeof *ids, cmp_i32);
    return n;
}
