/* batch_bench.c: the server's batched CPU step without the server (no sockets, no
 * frames): backend_cpu_forward_batch over K contexts that share one thread pool, each
 * taking one decode token per step after a 4-token prompt, against the same call with one
 * context (its backend's own forward, as the server runs one stream). Rounds alternate one K-stream step and one 1-stream step, so a change of the
 * machine's speed hits both; prints the best and median ms per step of each and the
 * aggregate tokens per second of K streams relative to one stream (issue 13's ">= 5x").
 * usage: batch_bench MODEL_DIR [STREAMS [STEPS [THREADS]]] (default 8 streams, 60 steps,
 * every core) */
#include "decode/backend.h"
#include "decode/cpu.h"
#include "embed/model.h"
#include "shared/util.h"
#include "tests/bench/steal.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { KMAX = 64 };

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct group {
    backend *b[KMAX];
    cpu_batch *ws;
    float *lg[KMAX];
    int32_t ids[KMAX][4];
    int k;
} group;

static void step(group *g, int s, int n, int V)
{
    const int32_t *ip[KMAX];
    int ns[KMAX], all[KMAX] = {0};
    for (int i = 0; i < g->k; i++) {
        if (n == 1) g->ids[i][0] = (int32_t)((s * 31 + i * 7 + 1) % V);
        ip[i] = g->ids[i];
        ns[i] = n;
    }
    /* one stream takes the backend's own forward, as the server does */
    if (g->k == 1 ? g->b[0]->ops->forward(g->b[0], ip[0], n, g->lg[0], 0)
                  : backend_cpu_forward_batch(&g->ws, g->b, ip, ns, g->lg, all, g->k))
        phi3_die("%s", g->b[0]->err);
}

static void group_new(group *g, const phi3_model *m, int k, int threads, int ctx)
{
    char err[300];
    memset(g, 0, sizeof *g);
    g->k = k;
    for (int i = 0; i < k; i++) {
        g->b[i] = backend_cpu_new(m, ctx, threads, NULL, err, sizeof err);
        if (!g->b[i]) phi3_die("%s", err);
        if (i && backend_cpu_share_pool(g->b[i], g->b[0])) phi3_die("contexts cannot share threads");
        g->lg[i] = xmalloc((size_t)m->cfg.vocab * sizeof(float));
        for (int t = 0; t < 4; t++) g->ids[i][t] = (int32_t)((i * 7 + t * 13 + 5) % m->cfg.vocab);
    }
    step(g, 0, 4, m->cfg.vocab);
}

int main(int argc, char **argv)
{
    if (argc < 2) phi3_die("usage: batch_bench MODEL_DIR [STREAMS [STEPS [THREADS]]]");
    int k = argc > 2 ? atoi(argv[2]) : 8, steps = argc > 3 ? atoi(argv[3]) : 60;
    int threads = argc > 4 ? atoi(argv[4]) : 0;
    if (k < 2 || k > KMAX || steps < 1) phi3_die("streams must be 2..%d and steps at least 1", KMAX);
    char err[300];
    phi3_model *m = model_load(argv[1], err, sizeof err);
    if (!m) phi3_die("%s", err);
    int V = m->cfg.vocab, ctx = 4 + steps + 8;
    group many, one;
    group_new(&many, m, k, threads, ctx);
    group_new(&one, m, 1, threads, ctx);
    double *tk = xmalloc((size_t)steps * sizeof *tk), *t1 = xmalloc((size_t)steps * sizeof *t1);
    bench_cpu_time st;
    int st_ok = bench_cpu_time_now(&st);
    for (int s = 0; s < steps; s++) {
        double a = now();
        step(&many, s, 1, V);
        double b = now();
        step(&one, s, 1, V);
        t1[s] = now() - b;
        tk[s] = b - a;
    }
    qsort(tk, (size_t)steps, sizeof *tk, cmp);
    qsort(t1, (size_t)steps, sizeof *t1, cmp);
    double mk = tk[steps / 2], m1 = t1[steps / 2];
    printf("batched CPU step (backend_cpu_forward_batch), %d steps of one token per stream, contexts 5..%d:\n", steps,
           4 + steps);
    printf("  1 stream:   best %.2f ms, median %.2f ms per step\n", t1[0] * 1e3, m1 * 1e3);
    printf("  %d streams: best %.2f ms, median %.2f ms per step: %.2fx the tokens per second of one stream "
           "(medians; best: %.2fx)\n", k, tk[0] * 1e3, mk * 1e3, k * m1 / mk, k * t1[0] / tk[0]);
    bench_print_steal(&st, st_ok);
    for (int i = k - 1; i >= 0; i--) {      /* the threads' owner, b[0], last */
        many.b[i]->ops->destroy(many.b[i]);
        free(many.lg[i]);
    }
    one.b[0]->ops->destroy(one.b[0]);
    free(one.lg[0]);
    backend_cpu_batch_free(many.ws);
    backend_cpu_batch_free(one.ws);
    free(tk);
    free(t1);
    model_free(m);
    return 0;
}
