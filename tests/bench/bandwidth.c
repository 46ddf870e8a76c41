/* bandwidth.c: the machine's memory read bandwidth with T threads (default: all cores):
 * each thread sums its share of a 2 GiB buffer with 256-bit loads; best of 5 passes,
 * printed as GB/s (1e9 bytes) on stdout. usage: bandwidth [THREADS] */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SIZE ((size_t)2 << 30)
static char *buf;
static int nthreads;
static volatile float sink;

__attribute__((target("avx2"))) static void *reader(void *a)
{
    long id = (long)a;
    size_t share = SIZE / (size_t)nthreads, b = share * (size_t)id;
    const __m256 *p = (const __m256 *)(buf + b);
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < share / 32; i += 4) {
        s0 = _mm256_add_ps(s0, p[i]);
        s1 = _mm256_add_ps(s1, p[i + 1]);
        s2 = _mm256_add_ps(s2, p[i + 2]);
        s3 = _mm256_add_ps(s3, p[i + 3]);
    }
    float out[8];
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    sink += out[0];
    return NULL;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    nthreads = argc > 1 ? atoi(argv[1]) : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (nthreads < 1 || nthreads > 256) nthreads = 1;
    if (posix_memalign((void **)&buf, 64, SIZE)) return 1;
    memset(buf, 1, SIZE);
    double best = 0;
    for (int pass = 0; pass < 5; pass++) {
        pthread_t t[256];
        double t0 = now();
        for (long i = 0; i < nthreads; i++) pthread_create(&t[i], NULL, reader, (void *)i);
        for (int i = 0; i < nthreads; i++) pthread_join(t[i], NULL);
        double gbs = SIZE / (now() - t0) / 1e9;
        if (gbs > best) best = gbs;
    }
    printf("%.2f\n", best);
    free(buf);
    return 0;
}
