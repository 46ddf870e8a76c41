/* bench.h: what the C benchmarks share: a fixed-seed xorshift for their inputs, a
 * monotonic clock, and a thread pool with each thread's gemm_rows scratch. */
#ifndef PHI3_BENCH_H
#define PHI3_BENCH_H
#include "decode/gemm.h"
#include "decode/pool.h"
#include "shared/util.h"
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

static uint64_t bench_rng = 88172645463325252ull;

static inline uint32_t rnd(void)
{
    bench_rng ^= bench_rng << 13;
    bench_rng ^= bench_rng >> 7;
    bench_rng ^= bench_rng << 17;
    return (uint32_t)(bench_rng >> 32);
}

static inline double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

typedef struct bench_pool {
    pool *p;
    float **scratch;            /* [pool_threads(p)][gemm_scratch_floats()] */
} bench_pool;

static inline bench_pool bench_pool_new(int threads)
{
    bench_pool b = {pool_new(threads), NULL};
    b.scratch = malloc((size_t)pool_threads(b.p) * sizeof *b.scratch);
    for (int t = 0; t < pool_threads(b.p); t++) b.scratch[t] = xmalloc_aligned(gemm_scratch_floats() * sizeof(float));   /* as the backend's */
    return b;
}

static inline void bench_pool_free(bench_pool *b)
{
    for (int t = 0; t < pool_threads(b->p); t++) free(b->scratch[t]);
    free(b->scratch);
    pool_free(b->p);
}

/* out[t * rows + r] = W[r] . x[t * ldx] for one bf16 matrix W [rows, K], n tokens, through
 * the pool in blocks of GEMM_MB rows as the backend does */
typedef struct bench_mat {
    const gemm_ops *op;
    const uint8_t *w;
    int rows, K, n, ldx;
    const float *x;
    float *out;
    float **scratch;
} bench_mat;

static void bench_mat_rows(void *ctx, int begin, int end, int tid)
{
    const bench_mat *j = ctx;
    int r1 = end * GEMM_MB < j->rows ? end * GEMM_MB : j->rows;
    gemm_rows(j->op, j->w, (size_t)j->K * 2, j->K, begin * GEMM_MB, r1, j->x, (size_t)j->ldx, j->n, j->out,
              (size_t)j->rows, j->scratch[tid]);
}

static inline void bench_matmul(bench_pool *b, const uint16_t *w, int rows, int K, const float *x, int ldx, int n,
                                float *out)
{
    bench_mat j = {gemm_ops_for(ST_BF16), (const uint8_t *)w, rows, K, n, ldx, x, out, b->scratch};
    pool_run(b->p, bench_mat_rows, &j, (rows + GEMM_MB - 1) / GEMM_MB);
}

#endif
