/* ref_test.c: the CPU backend against the transformers fixtures (tests/fixtures/DIR/
 * reference.safetensors), plus bit-identity across token splits and thread counts.
 * Tolerances: logits and hidden states within 1e-5 relative L2 error per position for
 * full passes (1e-4 for the cached greedy steps); argmax equal to the reference. */
#include "decode/backend.h"
#include "decode/cpu.h"
#include "embed/model.h"
#include "shared/util.h"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_no, failed;

static void ok(int cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void ok(int cond, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%sok %d - ", cond ? "" : "not ", ++test_no);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (!cond) failed++;
    fflush(stdout);
}

static double rel_l2(const float *a, const float *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static const st_tensor *ref(const st_file *f, const char *name, st_dtype dt)
{
    char err[256];
    int64_t any[3] = {-1, -1, -1};
    const st_tensor *t = st_find(f, name);
    if (!t || !st_check(t, name, ST_MASK(dt), t->ndim, any, err, sizeof err)) {
        printf("Bail out! reference %s: %s\n", name, t ? err : "missing");
        exit(1);
    }
    return t;
}

static backend *new_cpu(const phi3_model *m, int threads)
{
    char err[256];
    backend *b = backend_cpu_new(m, 0, threads, NULL, err, sizeof err);
    if (!b) {
        printf("Bail out! backend: %s\n", err);
        exit(1);
    }
    return b;
}

static phi3_model *load(const char *dir)
{
    char err[512];
    phi3_model *m = model_load(dir, err, sizeof err);
    if (!m) {
        printf("Bail out! %s\n", err);
        exit(1);
    }
    return m;
}

/* Hidden-state capture: stage -> [T, hidden] */
typedef struct capture {
    float *h[16];
    int hidden, T;
} capture;

static void cap_fn(void *ctx, int stage, int pos0, int n, const float *x)
{
    capture *c = ctx;
    if (stage >= 16) return;
    if (!c->h[stage]) c->h[stage] = calloc((size_t)c->T * c->hidden, sizeof(float));
    memcpy(c->h[stage] + (size_t)pos0 * c->hidden, x, (size_t)n * c->hidden * sizeof(float));
}

/* Full pass over ids with every position's logits and hidden states. */
static void full_pass(const char *what, const phi3_model *m, const st_file *R, const char *ids_name,
                      const char *logits_name, const char *hidden_name)
{
    const phi3_config *cf = &m->cfg;
    const st_tensor *ti = ref(R, ids_name, ST_I32), *tl = ref(R, logits_name, ST_F32);
    int T = (int)ti->shape[0], V = cf->vocab;
    backend *b = new_cpu(m, 0);
    capture cap = {.hidden = cf->hidden, .T = T};
    backend_cpu_set_hidden_hook(b, cap_fn, &cap);
    float *lg = xmalloc((size_t)T * V * sizeof(float));
    ok(b->ops->forward(b, ti->data, T, lg, 1) == 0, "%s: forward %d tokens %s", what, T, b->err);
    double worst = 0;
    int am = 1;
    for (int t = 0; t < T; t++) {
        const float *r = (const float *)tl->data + (size_t)t * V;
        double e = rel_l2(lg + (size_t)t * V, r, (size_t)V);
        if (e > worst) worst = e;
        am &= argmax(lg + (size_t)t * V, V) == argmax(r, V);
    }
    ok(worst < 1e-5, "%s: logits of all %d positions within 1e-5 rel L2 (worst %.3g)", what, T, worst);
    ok(am, "%s: argmax equal at every position", what);
    if (hidden_name) {
        const st_tensor *th = ref(R, hidden_name, ST_F32);
        int S = (int)th->shape[0];
        for (int k = 0; k < S; k++) {
            int stage = k < cf->n_layers ? k : cf->n_layers + 1;
            const float *r = (const float *)th->data + (size_t)k * T * cf->hidden;
            double e = cap.h[stage] ? rel_l2(cap.h[stage], r, (size_t)T * cf->hidden) : 1;
            ok(e < 1e-5, "%s: hidden state %d (stage %d) within 1e-5 rel L2 (%.3g)", what, k, stage, e);
        }
    }
    for (int i = 0; i < 16; i++) free(cap.h[i]);
    free(lg);
    b->ops->destroy(b);
}

/* Selected positions of a long prompt (long factors everywhere). */
static void long_pass(const phi3_model *m, const st_file *R)
{
    const phi3_config *cf = &m->cfg;
    const st_tensor *ti = ref(R, "long.ids", ST_I32), *tp = ref(R, "long.pos", ST_I32),
                    *tl = ref(R, "long.logits", ST_F32);
    int T = (int)ti->shape[0], V = cf->vocab;
    backend *b = new_cpu(m, 0);
    float *lg = xmalloc((size_t)T * V * sizeof(float));
    ok(b->ops->forward(b, ti->data, T, lg, 1) == 0, "long: forward %d tokens", T);
    ok(b->rope_long == 1, "long: keys use the long factors");
    double worst = 0;
    for (int k = 0; k < tp->shape[0]; k++) {
        int p = ((const int32_t *)tp->data)[k];
        double e = rel_l2(lg + (size_t)p * V, (const float *)tl->data + (size_t)k * V, (size_t)V);
        if (e > worst) worst = e;
    }
    ok(worst < 1e-5, "long: logits at %lld positions within 1e-5 rel L2 (worst %.3g)", (long long)tp->shape[0],
       worst);
    free(lg);
    b->ops->destroy(b);
}

/* Prompt in one call, then the greedy tokens one at a time through the KV cache. */
static void greedy_steps(const char *what, const phi3_model *m, const st_file *R, const char *prompt,
                         const char *greedy, const char *steps, int threads)
{
    const phi3_config *cf = &m->cfg;
    const st_tensor *tp = ref(R, prompt, ST_I32), *tg = ref(R, greedy, ST_I32), *ts = ref(R, steps, ST_F32);
    int P = (int)tp->shape[0], G = (int)tg->shape[0], V = cf->vocab;
    const int32_t *g = tg->data;
    backend *b = new_cpu(m, threads);
    float *lg = xmalloc((size_t)V * sizeof(float));
    int rc = b->ops->forward(b, tp->data, P, lg, 0);
    double worst = 0;
    int am = 1, first_bad = -1;
    for (int s = 0; s < G && !rc; s++) {
        double e = rel_l2(lg, (const float *)ts->data + (size_t)s * V, (size_t)V);
        if (e > worst) worst = e;
        if (argmax(lg, V) != g[s] && first_bad < 0) first_bad = s;
        am &= argmax(lg, V) == g[s];
        if (s + 1 < G) rc = b->ops->forward(b, &g[s], 1, lg, 0);
    }
    ok(!rc, "%s: %d cached steps ran %s", what, G, b->err);
    ok(worst < 1e-4, "%s: step logits within 1e-4 rel L2 at every step (worst %.3g)", what, worst);
    ok(am, "%s: argmax = reference greedy at every step (first miss %d)", what, first_bad);
    if (cf->rope_longrope && P + G - 1 > cf->original_max_pos)
        ok(b->rope_long == 1, "%s: context crossed original_max and switched to long factors", what);
    /* The last step's logits must equal a fresh pass over the same sequence bit for bit. */
    int32_t *all = xmalloc((size_t)(P + G) * sizeof *all);
    memcpy(all, tp->data, (size_t)P * sizeof *all);
    memcpy(all + P, g, (size_t)(G - 1) * sizeof *all);
    backend *f = new_cpu(m, threads);
    float *lf = xmalloc((size_t)V * sizeof(float));
    ok(f->ops->forward(f, all, P + G - 1, lf, 0) == 0 && !memcmp(lf, lg, (size_t)V * sizeof(float)),
       "%s: last cached step bit-identical to one fresh pass", what);
    free(lf);
    free(all);
    f->ops->destroy(f);
    free(lg);
    b->ops->destroy(b);
}

/* The same logits whatever the split of the prompt into calls and the thread count. */
static void bit_identity(const phi3_model *m, const st_file *R, const char *ids_name)
{
    const st_tensor *ti = ref(R, ids_name, ST_I32);
    int T = (int)ti->shape[0], V = m->cfg.vocab;
    const int32_t *ids = ti->data;
    float *a = xmalloc((size_t)T * V * sizeof(float)), *b2 = xmalloc((size_t)T * V * sizeof(float)),
          *c3 = xmalloc((size_t)T * V * sizeof(float));
    backend *b = new_cpu(m, 2);
    b->ops->forward(b, ids, T, a, 1);
    b->ops->destroy(b);
    b = new_cpu(m, 1);
    b->ops->forward(b, ids, T, b2, 1);
    b->ops->destroy(b);
    ok(!memcmp(a, b2, (size_t)T * V * sizeof(float)), "%s: all logits bit-identical with 1 and 2 threads",
       ids_name);
    b = new_cpu(m, 3);
    int cuts[] = {0, 1, 5, 6, T / 2, T - 1, T};
    for (int i = 0; i + 1 < 7; i++)
        b->ops->forward(b, ids + cuts[i], cuts[i + 1] - cuts[i], c3 + (size_t)cuts[i] * V, 1);
    ok(!memcmp(a, c3, (size_t)T * V * sizeof(float)), "%s: all logits bit-identical split 1+4+1+.. (3 threads)",
       ids_name);
    /* truncate and redo the tail: same again */
    b->ops->truncate(b, 3);
    b->ops->forward(b, ids + 3, T - 3, c3 + (size_t)3 * V, 1);
    ok(!memcmp(a, c3, (size_t)T * V * sizeof(float)), "%s: bit-identical after truncate(3) and re-feed", ids_name);
    b->ops->destroy(b);
    free(a);
    free(b2);
    free(c3);
}

int main(void)
{
    phi3_init("ref_test");
    char err[512];
    st_file R1, R2;
    if (st_open("tests/fixtures/tiny-longrope/reference.safetensors", &R1, err, sizeof err) ||
        st_open("tests/fixtures/tiny-gqa-window/reference.safetensors", &R2, err, sizeof err)) {
        printf("Bail out! %s\n", err);
        return 1;
    }
    phi3_model *m1 = load("tests/fixtures/tiny-longrope"), *m2 = load("tests/fixtures/tiny-gqa-window");
    full_pass("short", m1, &R1, "short.ids", "short.logits", "short.hidden");
    long_pass(m1, &R1);
    greedy_steps("cross", m1, &R1, "cross.prompt", "cross.greedy", "cross.step_logits", 0);
    full_pass("gqa all", m2, &R2, "all.ids", "all.logits", "all.hidden");
    greedy_steps("gqa gen", m2, &R2, "gen.prompt", "gen.greedy", "gen.step_logits", 2);
    bit_identity(m1, &R1, "short.ids");
    bit_identity(m2, &R2, "all.ids");
    model_free(m1);
    model_free(m2);
    st_close(&R1);
    st_close(&R2);
    printf("1..%d\n", test_no);
    return failed ? 1 : 0;
}
