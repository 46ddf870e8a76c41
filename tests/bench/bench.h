/* bench.h: what the C benchmarks share: a fixed-seed xorshift for their inputs, a
 * monotonic clock, and a thread pool with each thread's gemm_rows scratch. */
#ifndef PHI3_BENCH_H
#define PHI3_BENCH_H
#include "decode/gemm.h"
#include "decode/pool.h"
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
    for (int t = 0; t < pool_threads(b.p); t++) b.scratch[t] = malloc(gemm_scratch_floats() * sizeof(float));
    return b;
}

static inline void bench_pool_free(bench_pool *b)
{
    for (int t = 0; t < pool_threads(b->p); t++) free(b->scratch[t]);
    free(b->scratch);
    pool_free(b->p);
}

#endif
