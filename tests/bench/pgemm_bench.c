/* pgemm_bench.c: the CPU backend's bf16 matmul for a prefill frame (decode/gemm.c
 * gemm_rows, the blocked path) on the four matrices of one full-size Phi-3-mini layer
 * (hidden 3072, intermediate 8192: qkv 9216 x 3072, o 3072 x 3072, gate_up 16384 x 3072,
 * down 3072 x 8192; 226 MB of bf16, more than the caches hold), n token rows at once
 * through the thread pool in blocks of GEMM_MB rows as the backend does. Prints the best
 * GFLOP/s (2 x weights x tokens per second) over REPEATS passes, per matrix and in all, so
 * that a kernel change can be judged without the rest of a forward.
 * usage: pgemm_bench [THREADS [TOKENS [REPEATS [PAD]]]] (defaults 2, 256, 5, 0; PAD: floats
 * added to each activation row's stride) */
#include "decode/gemm.h"
#include "decode/pool.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tests/bench/bench.h"

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 2, n = argc > 2 ? atoi(argv[2]) : 256;
    int repeats = argc > 3 ? atoi(argv[3]) : 5, pad = argc > 4 ? atoi(argv[4]) : 0;
    if (n < 1 || n > 4096 || repeats < 1) {
        fprintf(stderr, "usage: pgemm_bench [THREADS [TOKENS (1..4096) [REPEATS]]]\n");
        return 1;
    }
    enum { H = 3072, I = 8192, NM = 4 };
    static const int shape[NM][2] = {{3 * H, H}, {H, H}, {2 * I, H}, {H, I}};
    static const char *name[NM] = {"qkv", "o", "gate_up", "down"};
    size_t total = 0, off[NM];
    for (int i = 0; i < NM; i++) off[i] = total, total += (size_t)shape[i][0] * shape[i][1];
    uint16_t *wb = aligned_alloc(64, (total * 2 + 63) / 64 * 64);
    for (size_t i = 0; i < total; i++) wb[i] = (uint16_t)(0x3c00 + (rnd() & 0x7f) + (rnd() & 0x8000));
    float *x = malloc((size_t)n * (I + pad) * sizeof(float)), *out = malloc((size_t)n * 2 * I * sizeof(float));
    for (size_t i = 0; i < (size_t)n * (I + pad); i++) x[i] = (float)(rnd() % 2000) * 1e-3f - 1.0f;
    bench_pool bp = bench_pool_new(threads);
    double best[NM + 1];
    for (int i = 0; i <= NM; i++) best[i] = 1e9;
    for (int r = 0; r < repeats; r++) {
        double all = 0;
        for (int i = 0; i < NM; i++) {
            double t0 = now();
            bench_matmul(&bp, wb + off[i], shape[i][0], shape[i][1], x, shape[i][1] + pad, n, out);
            double dt = now() - t0;
            all += dt;
            if (dt < best[i]) best[i] = dt;
        }
        if (all < best[NM]) best[NM] = all;
    }
    printf("bf16 gemm_rows, %d threads, vector level %d, %d tokens, one full-size layer (%.0f MB), best of %d:\n",
           pool_threads(bp.p), gemm_vec_level(), n, total * 2 / 1e6, repeats);
    for (int i = 0; i <= NM; i++) {
        double fl = 2.0 * (i < NM ? (double)shape[i][0] * shape[i][1] : (double)total) * n;
        printf("%8s %8.2f ms %7.1f GFLOP/s\n", i < NM ? name[i] : "layer", best[i] * 1e3, fl / best[i] / 1e9);
    }
    bench_pool_free(&bp);
    free(x);
    free(out);
    free(wb);
    return 0;
}
