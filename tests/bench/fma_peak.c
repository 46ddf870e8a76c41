/* fma_peak.c: the machine's measured FMA peak, the ceiling for prefill GFLOP/s.
 * Each thread runs independent chains of packed single-precision FMAs (enough of them
 * to cover the latency) for a fixed time; prints GFLOP/s over all threads (1 FMA = 2
 * FLOP per lane) for 256-bit (AVX2, what the 8-lane canonical dot order uses) and, where
 * the CPU has it, 512-bit vectors:  "ymm GFLOPS zmm GFLOPS threads" (zmm 0 if absent).
 * Usage: fma_peak [threads] (default: every online core). */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define ITERS 2000000L
#define ROUNDS 5

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static volatile float sink;

/* 12 named accumulators (empty asm statements keep the compiler from merging them): 12 independent chains
 * cover a 4-6 cycle FMA latency at 2 FMAs per cycle. */
#define CHAINS(V, FMA)                                                                      \
    V a0 = a, a1 = a, a2 = a, a3 = a, a4 = a, a5 = a, a6 = a, a7 = a, a8 = a, a9 = a, a10 = a, a11 = a; \
    for (long it = 0; it < ITERS; it++) {                                                   \
        a0 = FMA(a0, m, c), a1 = FMA(a1, m, c), a2 = FMA(a2, m, c), a3 = FMA(a3, m, c);    \
        a4 = FMA(a4, m, c), a5 = FMA(a5, m, c), a6 = FMA(a6, m, c), a7 = FMA(a7, m, c);    \
        a8 = FMA(a8, m, c), a9 = FMA(a9, m, c), a10 = FMA(a10, m, c), a11 = FMA(a11, m, c); \
        __asm__("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5));          \
        __asm__("" : "+x"(a6), "+x"(a7), "+x"(a8), "+x"(a9), "+x"(a10), "+x"(a11));        \
    }

__attribute__((target("avx2,fma"))) static double run_ymm(void)
{
    __m256 a = _mm256_set1_ps(1.0f), m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    CHAINS(__m256, _mm256_fmadd_ps)
    __m256 t = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    t = _mm256_add_ps(t, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float s[8];
    _mm256_storeu_ps(s, t);
    sink = s[0];
    return 12.0 * ITERS * 8 * 2;
}

__attribute__((target("avx512f"))) static double run_zmm(void)
{
    __m512 a = _mm512_set1_ps(1.0f), m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    CHAINS(__m512, _mm512_fmadd_ps)
    __m512 t = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    t = _mm512_add_ps(t, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    sink = _mm512_reduce_add_ps(t);
    return 12.0 * ITERS * 16 * 2;
}

static int wide;

static void *thr(void *arg)
{
    double *flop = arg;
    *flop = wide ? run_zmm() : run_ymm();
    return NULL;
}

static double measure(int threads, int zmm)
{
    double best = 0;
    wide = zmm;
    for (int r = 0; r < ROUNDS; r++) {
        pthread_t t[256];
        double f[256];
        double t0 = now();
        for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, thr, &f[i]);
        double sum = 0;
        for (int i = 0; i < threads; i++) {
            pthread_join(t[i], NULL);
            sum += f[i];
        }
        double g = sum / (now() - t0) / 1e9;
        if (g > best) best = g;
    }
    return best;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : sysconf(_SC_NPROCESSORS_ONLN);
    int threads = n < 1 ? 1 : n > 256 ? 256 : (int)n;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
        printf("0 0 %d\n", threads);
        return 0;
    }
    double y = measure(threads, 0);
    double z = __builtin_cpu_supports("avx512f") ? measure(threads, 1) : 0;
    printf("%.1f %.1f %d\n", y, z, threads);
    return 0;
}
