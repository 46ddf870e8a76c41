/* gemm_bench.c: the CPU backend's bf16 matmul (decode/gemm.c gemm_rows) for few tokens,
 * on the weights of the server benchmark's mid-size model (hidden 1024, 8 layers,
 * intermediate 2816, vocab 32064: 0.27 GB of bf16, more than the caches hold): one
 * "step" multiplies n token rows by every matrix, split over the thread pool in blocks of
 * GEMM_MB rows as the backend does. For n = 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128 tokens: ms per step
 * and the time per token relative to n = 1, with the few-token path (registers only; 7..12
 * tokens on AVX-512 with x packed once per product by gemm_pack_x, as the backend does) and
 * without it (gemm_set_small_max(0): the one-token dot4 once per token below 4 tokens, the
 * blocked panel path from 4, as before the few-token path; n = 128 is past the threshold,
 * so its two columns differ only by noise), min over REPEATS steps each, the modes
 * interleaved. The weights' GB/s at n = 1 is
 * printed next to the memory read bandwidth measured by tests/bench/bandwidth.c (server.sh).
 * usage: gemm_bench [THREADS [REPEATS [SMALL_MAX]]] (SMALL_MAX: the few-token path's
 * threshold, gemm_set_small_max; default its default) */
#include "decode/gemm.h"
#include "decode/pool.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "tests/bench/bench.h"
#include "tests/bench/steal.h"


typedef struct mat {
    const uint8_t *w;
    int rows, K;
} mat;

typedef struct job {
    const gemm_ops *op;
    const mat *m;
    const float *x;
    float *out;
    int n;
    float **scratch;
    const float *xq;            /* x packed for gemm_rows_xq (7..12 tokens), or NULL */
} job;

static void run_rows(void *ctx, int begin, int end, int tid)
{
    const job *j = ctx;
    int r1 = end * GEMM_MB < j->m->rows ? end * GEMM_MB : j->m->rows;
    gemm_rows_xq(j->op, j->m->w, (size_t)j->m->K * 2, j->m->K, begin * GEMM_MB, r1, j->x, (size_t)j->m->K, j->n,
                 j->out, (size_t)j->m->rows, j->scratch[tid], j->xq);
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 2, repeats = argc > 2 ? atoi(argv[2]) : 5;
    int small = argc > 3 ? atoi(argv[3]) : -1;
    enum { H = 1024, I = 2816, L = 8, V = 32064, NMAX = 128 };
    mat ms[4 * L + 1];
    int nm = 0;
    size_t total = 0;
    for (int l = 0; l < L; l++) {
        const int shape[4][2] = {{3 * H, H}, {H, H}, {2 * I, H}, {H, I}};   /* qkv, o, gate_up, down */
        for (int s = 0; s < 4; s++) ms[nm++] = (mat){NULL, shape[s][0], shape[s][1]};
    }
    ms[nm++] = (mat){NULL, V, H};
    for (int i = 0; i < nm; i++) total += (size_t)ms[i].rows * ms[i].K;
    uint16_t *wb = aligned_alloc(64, (total * 2 + 63) / 64 * 64);
    for (size_t i = 0; i < total; i++) wb[i] = (uint16_t)(0x3c00 + (rnd() & 0x7f) + (rnd() & 0x8000));
    size_t off = 0, maxrows = 0;
    for (int i = 0; i < nm; i++) {
        ms[i].w = (const uint8_t *)(wb + off);
        off += (size_t)ms[i].rows * ms[i].K;
        if ((size_t)ms[i].rows > maxrows) maxrows = (size_t)ms[i].rows;
    }
    float *x = malloc((size_t)NMAX * I * sizeof(float)), *out = malloc((size_t)NMAX * maxrows * sizeof(float));
    for (size_t i = 0; i < (size_t)NMAX * I; i++) x[i] = (float)(rnd() % 2000) * 1e-3f - 1.0f;
    float *xq = xmalloc_aligned((size_t)12 * I * sizeof(float));     /* gemm_xq_floats <= 12 K */
    bench_cpu_time st;
    int st_ok = bench_cpu_time_now(&st);
    bench_pool bp = bench_pool_new(threads);
    pool *p = bp.p;
    float **scratch = bp.scratch;
    const gemm_ops *op = gemm_ops_for(ST_BF16);
    static const int ns[] = {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128};
    enum { NN = sizeof ns / sizeof *ns };
    double best[2][NN];
    for (int m = 0; m < 2; m++)
        for (int i = 0; i < NN; i++) best[m][i] = 1e9;
    for (int r = 0; r < repeats; r++)
        for (int i = 0; i < NN; i++)
            for (int m = 0; m < 2; m++) {
                gemm_set_small_max(m ? 0 : small);
                double t0 = now();
                for (int k = 0; k < nm; k++) {
                    job j = {op, &ms[k], x, out, ns[i], scratch, NULL};
                    /* as the backend does: x packed once per product (inside the timing) */
                    if (gemm_xq_floats(op, ns[i], ms[k].K)) {
                        gemm_pack_x(op, x, (size_t)ms[k].K, ns[i], ms[k].K, xq);
                        j.xq = xq;
                    }
                    pool_run(p, run_rows, &j, (ms[k].rows + GEMM_MB - 1) / GEMM_MB);
                }
                double dt = now() - t0;
                if (dt < best[m][i]) best[m][i] = dt;
            }
    gemm_set_small_max(-1);
    printf("bf16 gemm_rows, %d threads, vector level %d, %.2f GB of weights per step (%d matrices), min of %d:\n",
           pool_threads(p), gemm_vec_level(), total * 2 / 1e9, nm, repeats);
    printf("%6s %28s %28s %8s\n", "tokens", "few-token path: ms/step", "without: ms/step", "speedup");
    for (int i = 0; i < NN; i++) {
        double a = best[0][i] * 1e3, b = best[1][i] * 1e3;
        printf("%6d %12.2f (%5.2fx per tok) %12.2f (%5.2fx per tok) %7.2fx\n", ns[i], a,
               best[0][0] / (best[0][i] / ns[i]), b, best[1][0] / (best[1][i] / ns[i]), b / a);
    }
    printf("(Nx per tok: tokens per second relative to one token at a time, same mode)\n");
    printf("n = 1: %.1f GB/s of weights\n", total * 2 / best[0][0] / 1e9);
    bench_print_steal(&st, st_ok);
    bench_pool_free(&bp);
    free(x);
    free(out);
    free(wb);
    free(xq);
    return 0;
}
