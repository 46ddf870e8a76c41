/* blas_cmp.c: issue 15's "our kernel or a library?" by measurement. The four products of
 * one full-size Phi-3-mini layer (qkv 9216 x 3072, o 3072 x 3072, gate_up 16384 x 3072,
 * down 3072 x 8192) for a 256-token step, 2 threads:
 *   ours      gemm_rows on bf16 weights through the pool (the backend's path);
 *   openblas  cblas_sgemm on the same weights widened to float32 beforehand (not timed:
 *             the backend would have to keep a 15 GB float32 copy of Phi-3-mini, or pay
 *             the widening per step, which "openblas+cvt" times);
 * best GFLOP/s of REPEATS passes each, alternating. Then whether each gives one token the
 * same bits alone as inside the 256-token product (our canonical order: yes by
 * construction; a library's blocking: no guarantee), and the largest relative difference
 * between the two. Built and run by tests/bench/blas.sh only where OpenBLAS is installed.
 * usage: blas_cmp [THREADS [TOKENS [REPEATS]]] */
#include "decode/gemm.h"
#include "decode/pool.h"
#include "embed/model.h"
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tests/bench/bench.h"

void openblas_set_num_threads(int);

static float bf(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 2, n = argc > 2 ? atoi(argv[2]) : 256;
    int repeats = argc > 3 ? atoi(argv[3]) : 3;
    if (threads < 1 || n < 2 || n > 4096 || repeats < 1) {
        fprintf(stderr, "usage: blas_cmp [THREADS [TOKENS (2..4096) [REPEATS]]]\n");
        return 1;
    }
    enum { H = 3072, FF = 8192, NM = 4, PAD = 16 };
    static const int shape[NM][2] = {{3 * H, H}, {H, H}, {2 * FF, H}, {H, FF}};
    size_t total = 0, off[NM];
    for (int i = 0; i < NM; i++) off[i] = total, total += (size_t)shape[i][0] * shape[i][1];
    uint16_t *wb = malloc(total * 2);
    float *wf = malloc(total * sizeof(float));
    for (size_t i = 0; i < total; i++) wb[i] = (uint16_t)(0x3c00 + (rnd() & 0x7f) + (rnd() & 0x8000)), wf[i] = bf(wb[i]);
    float *x = malloc((size_t)n * (FF + PAD) * sizeof(float));
    for (size_t i = 0; i < (size_t)n * (FF + PAD); i++) x[i] = (float)(rnd() % 2000) * 1e-3f - 1.0f;
    float *o1 = malloc((size_t)n * 2 * FF * sizeof(float)), *o2 = malloc((size_t)n * 2 * FF * sizeof(float));
    float *t1 = malloc((size_t)2 * FF * sizeof(float)), *t2 = malloc((size_t)2 * FF * sizeof(float));
    float *wcvt = malloc((size_t)2 * FF * H * sizeof(float));
    bench_pool bp = bench_pool_new(threads);
    openblas_set_num_threads(threads);
    double best[3] = {1e9, 1e9, 1e9}, flop = 2.0 * (double)total * n;
    for (int r = 0; r < repeats; r++)
        for (int m = 0; m < 3; m++) {
            double t0 = now();
            for (int i = 0; i < NM; i++) {
                int R = shape[i][0], K = shape[i][1], ldx = K + PAD;
                if (m == 0) bench_matmul(&bp, wb + off[i], R, K, x, ldx, n, o1);
                else {
                    const float *W = wf + off[i];
                    if (m == 2) {   /* the per-step widening a float32 library would need (a plain
                                     * one-thread loop: an upper bound on its cost) */
                        for (size_t e = 0; e < (size_t)R * K; e++) wcvt[e] = bf(wb[off[i] + e]);
                        W = wcvt;
                    }
                    /* out[t][r] = sum_k x[t][k] W[r][k]: C (n x R) = X (n x K) . W^T */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, R, K, 1.0f, x, ldx, W, K, 0.0f, o2, R);
                }
            }
            double dt = now() - t0;
            if (dt < best[m]) best[m] = dt;
        }
    printf("one full-size layer's four products, %d tokens, %d threads, best of %d (alternating):\n", n, threads,
           repeats);
    printf("  ours (bf16, canonical order)          %7.1f GFLOP/s\n", flop / best[0] / 1e9);
    printf("  OpenBLAS sgemm (float32 weights)      %7.1f GFLOP/s\n", flop / best[1] / 1e9);
    printf("  OpenBLAS sgemm + widening per step    %7.1f GFLOP/s\n", flop / best[2] / 1e9);
    /* the last product (down): token 0 alone vs inside the frame */
    int R = shape[3][0], K = shape[3][1], ldx = K + PAD;
    const float *W = wf + off[3];
    bench_matmul(&bp, wb + off[3], R, K, x, ldx, n, o1);
    bench_matmul(&bp, wb + off[3], R, K, x, ldx, 1, t1);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, R, K, 1.0f, x, ldx, W, K, 0.0f, o2, R);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, R, K, 1.0f, W, K, x, 1, 0.0f, t2, 1);
    int same_ours = !memcmp(o1, t1, (size_t)R * sizeof(float)), same_blas = !memcmp(o2, t2, (size_t)R * sizeof(float));
    double md = 0;
    for (int r = 0; r < R; r++) {
        double d = fabs((double)o1[r] - o2[r]) / (fabs((double)o1[r]) + 1e-3);
        if (d > md) md = d;
    }
    printf("token 0 of the down product alone (1 token) vs inside the %d-token product: ours %s, OpenBLAS "
           "(sgemv vs sgemm) %s; ours vs OpenBLAS: largest relative difference %.2g\n",
           n, same_ours ? "bit-identical" : "DIFFERENT", same_blas ? "bit-identical" : "different", md);
    bench_pool_free(&bp);
    free(wb), free(wf), free(x), free(o1), free(o2), free(t1), free(t2), free(wcvt);
    return 0;
}
