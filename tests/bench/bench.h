/* bench.h: what the C benchmarks share: a fixed-seed xorshift for their inputs and a
 * monotonic clock. */
#ifndef PHI3_BENCH_H
#define PHI3_BENCH_H
#include <stdint.h>
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

#endif
