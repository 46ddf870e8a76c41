/* quant_bench.c: CPU speed of the quantized weight kernels (decode/qdot.c).
 * 1. GEMV (one token) per type on the full-size Phi-3-mini shapes, through the thread
 *    pool as the backend runs them: GB/s of weight bytes and Gweights/s.
 * 2. The CPU backend itself on a synthetic Phi-3 of full width with 2 layers (one
 *    "more bits" layer and one plain one, as llama.cpp's Q4_K_M mix alternates them) and
 *    a vocabulary cut to 2/32 of 32064, so every weight class weighs what it does in the
 *    32-layer model: decode ms/token and prefill tokens/s in bf16, Q8_0, Q4_K_M, Q4_0.
 * 3. GEMV out of cache: each type's weights (768 MB, far past the L3) read once per pass
 *    through the pool, bf16's decode kernel first: GB/s of weight bytes and the ratio to
 *    bf16's GB/s. Decode speed relative to bf16 is about this ratio times the ratio of
 *    bytes (Q4_K_M: 3.19x fewer); it says how far each kernel is from the memory bound.
 * 0. Compute only: one thread, 32 rows x 3072 in L2, min over 2000 passes (robust on a
 *    busy machine): the backend's bf16 decode kernel (gemm dot4) vs each type's rows
 *    kernel at each level, and the opt-in integer kernels (decode/qlimb.h) where the
 *    CPU has them.
 * Random weights (random bytes with sane scales): speed does not depend on the values.
 * usage: quant_bench [THREADS [PREFILL_TOKENS [PARTS]]]; PARTS picks sections by digit
 * (default "012"; "3" runs only when named); prints a table on stdout. */
#include "decode/backend.h"
#include "decode/gemm.h"
#include "decode/pool.h"
#include "decode/qdot.h"
#include "decode/qlimb.h"
#include "embed/model.h"
#include "embed/quant.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "tests/bench/bench.h"


/* rows x cols of dtype d: random bytes; block scales set to small normal halves, bf16
 * and f32 to small normal values. */
static void *weights(st_dtype d, int64_t rows, int64_t cols, size_t *bytes)
{
    size_t rb = quant_row_bytes(d, cols), n = rb * (size_t)rows;
    uint8_t *p = aligned_alloc(64, (n + 63) / 64 * 64);
    uint32_t *w = (uint32_t *)p;
    for (size_t i = 0; i < n / 4; i++) w[i] = rnd();
    if (d == ST_BF16)
        for (size_t i = 0; i < n / 2; i++) ((uint16_t *)p)[i] = (uint16_t)(0x3c00 + (rnd() & 0x7f) + (rnd() & 0x8000));
    if (d == ST_F32)
        for (size_t i = 0; i < n / 4; i++) ((float *)p)[i] = (float)(rnd() % 1000) * 1e-5f;
    if (quant_is_block(d)) {
        size_t bb = quant_block_bytes(d), off = d == ST_Q6_K ? 208 : 0;
        int ns = d == ST_Q4_K || d == ST_Q5_K ? 2 : 1;
        for (size_t b = 0; b < n / bb; b++)
            for (int k = 0; k < ns; k++) {
                uint16_t h = (uint16_t)(0x1800 + rnd() % 0x400);
                memcpy(p + b * bb + off + 2 * k, &h, 2);
            }
    }
    *bytes = n;
    return p;
}

/* ---- 0. in-cache compute ---- */

static void bench_l2(void)
{
    enum { R = 32, C = 3072, PASSES = 2000 };
    static const st_dtype types[] = {ST_Q8_0, ST_Q4_0, ST_Q4_K, ST_Q5_K, ST_Q6_K};
    float *x = malloc(C * sizeof *x), out[QDOT_ROWS];
    for (int i = 0; i < C; i++) x[i] = (float)(rnd() % 2000) * 1e-3f - 1.0f;
    volatile float sink = 0;
    size_t bytes;
    void *wb = weights(ST_BF16, R, C, &bytes);
    const gemm_ops *op = gemm_ops_for(ST_BF16);
    double best = 1e9;
    for (int p = 0; p < PASSES; p++) {
        double t0 = now();
        for (int r = 0; r < R; r += 4) op->dot4((uint8_t *)wb + (size_t)r * C * 2, (size_t)C * 2, x, C, out), sink += out[0];
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    free(wb);
    double bf = (double)R * C / best / 1e9;
    printf("in L2, 1 thread, %d rows x %d, min of %d passes: Gweights/s (ratio to bf16)\n", R, C, PASSES);
    printf("bf16 (gemm dot4, level %d): %.1f\n", gemm_vec_level(), bf);
    int top = qdot_level();
    for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
        printf("%-6s", st_dtype_name(types[t]));
        void *w = weights(types[t], R, C, &bytes);
        size_t rb = quant_row_bytes(types[t], C);
        for (int lv = 1; lv <= top; lv++) {
            qdot_set_level(lv);
            best = 1e9;
            for (int p = 0; p < PASSES; p++) {
                double t0 = now();
                for (int r = 0; r < R; r += QDOT_ROWS)
                    qdot_rows(types[t], (uint8_t *)w + r * rb, rb, QDOT_ROWS, x, C, out), sink += out[0];
                double dt = now() - t0;
                if (dt < best) best = dt;
            }
            double g = (double)R * C / best / 1e9;
            printf("   %s %5.1f (%.2fx)", lv == 1 ? "AVX2" : "AVX-512", g, g / bf);
        }
        qlimb_force(1);
        if (qlimb_enabled() && qlimb_supported(types[t])) {
            /* the opt-in integer kernels (PHI3_QUANT_LIMBS=1); x is prepared once per
             * product, i.e. once for thousands of rows in the model: timed apart */
            void *xp = aligned_alloc(64, qlimb_xbytes(C));
            double bp = 1e9;
            for (int p = 0; p < PASSES; p++) {
                double t0 = now();
                qlimb_prep(types[t], x, C, xp);
                double dt = now() - t0;
                if (dt < bp) bp = dt;
            }
            best = 1e9;
            for (int p = 0; p < PASSES; p++) {
                double t0 = now();
                for (int r = 0; r < R; r += QLIMB_ROWS)
                    qlimb_rows(types[t], (uint8_t *)w + r * rb, rb, QLIMB_ROWS, xp, C, out), sink += out[0];
                double dt = now() - t0;
                if (dt < best) best = dt;
            }
            double g = (double)R * C / best / 1e9;
            printf("   limbs %5.1f (%.2fx; x prepared in %.2f ns/element)", g, g / bf, bp / C * 1e9);
            free(xp);
        }
        qlimb_force(-1);
        printf("\n");
        free(w);
    }
    qdot_set_level(top);
    free(x);
    printf("\n");
}

/* ---- 1. GEMV through the pool ---- */

typedef struct gemv {
    st_dtype d;
    const uint8_t *w;
    size_t rb;
    int cols;
    const float *x;
    float *y;
} gemv;

static void gemv_rows(void *ctx, int begin, int end, int tid)
{
    const gemv *g = ctx;
    for (int r = begin; r < end; r += QDOT_ROWS) {
        int nr = end - r < QDOT_ROWS ? end - r : QDOT_ROWS;
        qdot_rows(g->d, g->w + (size_t)r * g->rb, g->rb, nr, g->x, g->cols, g->y + r);
    }
}

static void bench_gemv(pool *p)
{
    static const int shapes[][2] = {{3072, 3072}, {16384, 3072}, {3072, 8192}};
    static const st_dtype types[] = {ST_Q8_0, ST_Q4_0, ST_Q4_K, ST_Q5_K, ST_Q6_K};
    static const char *const lv[] = {"portable", "AVX2/FMA", "AVX-512"};
    printf("GEMV, %d threads (%s kernels): GB/s of weight bytes, Gweights/s; best of 9 after warm-up\n",
           pool_threads(p), lv[qdot_level()]);
    printf("%-6s %18s %18s %18s\n", "type", "3072x3072", "16384x3072", "3072x8192");
    float *x = malloc(8192 * sizeof *x), *y = malloc(16384 * sizeof *y);
    for (int i = 0; i < 8192; i++) x[i] = (float)(rnd() % 2000) * 1e-3f - 1.0f;
    for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
        printf("%-6s", st_dtype_name(types[t]));
        for (int s = 0; s < 3; s++) {
            size_t bytes;
            int rows = shapes[s][0], cols = shapes[s][1];
            gemv g = {types[t], weights(types[t], rows, cols, &bytes), quant_row_bytes(types[t], cols), cols, x, y};
            double best = 1e9;
            for (int rep = 0; rep < 10; rep++) {
                double t0 = now();
                pool_run(p, gemv_rows, &g, rows);
                double dt = now() - t0;
                if (rep && dt < best) best = dt;
            }
            printf("   %6.1f GB/s %5.1f", bytes / best / 1e9, (double)rows * cols / best / 1e9);
            free((void *)g.w);
        }
        printf("\n");
    }
    free(x);
    free(y);
}

/* ---- 3. GEMV out of cache ---- */

typedef struct ooc {
    st_dtype d;
    const uint8_t *w;
    size_t rb;
    int cols, rows, limbs;
    const float *x;
    const void *xp;
    float *y;
    float **scratch;
} ooc;

/* the backend's decode rows (decode/cpu.c mm_rows): bf16 through gemm_rows_xq, block types
 * QDOT_ROWS at a time through qdot_rows or qlimb_rows */
static void ooc_rows(void *ctx, int begin, int end, int tid)
{
    const ooc *g = ctx;
    int r0 = begin * GEMM_MB, r1 = end * GEMM_MB < g->rows ? end * GEMM_MB : g->rows;
    if (!quant_is_block(g->d)) {
        gemm_rows_xq(gemm_ops_for(g->d), g->w, g->rb, g->cols, r0, r1, g->x, (size_t)g->cols, 1, g->y, 1,
                     g->scratch[tid], NULL);
        return;
    }
    float o[QDOT_ROWS];
    for (int r = r0; r < r1; r += QDOT_ROWS) {
        int nr = r1 - r < QDOT_ROWS ? r1 - r : QDOT_ROWS;
        if (g->limbs) qlimb_rows(g->d, g->w + (size_t)r * g->rb, g->rb, nr, g->xp, g->cols, o);
        else qdot_rows(g->d, g->w + (size_t)r * g->rb, g->rb, nr, g->x, g->cols, o);
        memcpy(g->y + r, o, (size_t)nr * sizeof *o);
    }
}

static void bench_ooc(pool *p)
{
    enum { C = 3072 };
    static const st_dtype types[] = {ST_BF16, ST_Q8_0, ST_Q4_0, ST_Q4_K, ST_Q5_K, ST_Q6_K};
    const size_t target = (size_t)768 << 20;
    int th = pool_threads(p);
    float *x = malloc(C * sizeof *x), **scratch = malloc((size_t)th * sizeof *scratch);
    for (int i = 0; i < C; i++) x[i] = (float)(rnd() % 2000) * 1e-3f - 1.0f;
    for (int t = 0; t < th; t++) scratch[t] = aligned_alloc(64, (gemm_scratch_floats() * sizeof(float) + 63) / 64 * 64);
    void *xp = aligned_alloc(64, qlimb_xbytes(C));
    printf("GEMV out of cache, %d threads, %d columns, %zu MB of weights per type, best of 5 passes after one:\n"
           "GB/s of weight bytes (ratio to bf16's GB/s)\n", th, C, target >> 20);
    double bf = 0;
    for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
        st_dtype d = types[t];
        size_t rb = quant_row_bytes(d, C), bytes;
        int rows = (int)(target / rb / GEMM_MB * GEMM_MB);
        float *y = malloc((size_t)rows * sizeof *y);
        void *w = weights(d, rows, C, &bytes);
        printf("%-6s", st_dtype_name(d));
        qlimb_force(1);
        int nl = qlimb_enabled() && qlimb_supported(d) ? 2 : 1;
        qlimb_force(-1);
        for (int l = 0; l < nl; l++) {
            if (l) {
                qlimb_force(1);
                qlimb_prep(d, x, C, xp);
            }
            ooc g = {d, w, rb, C, rows, l, x, xp, y, scratch};
            double best = 1e9;
            for (int rep = 0; rep < 6; rep++) {
                double t0 = now();
                pool_run(p, ooc_rows, &g, (rows + GEMM_MB - 1) / GEMM_MB);
                double dt = now() - t0;
                if (rep && dt < best) best = dt;
            }
            double gbs = (double)bytes / best / 1e9;
            if (d == ST_BF16) bf = gbs;
            printf("   %s %5.1f (%.2f)", l ? "limbs" : quant_is_block(d) ? "exact" : "", gbs, gbs / bf);
            qlimb_force(-1);
        }
        printf("\n");
        free(w);
        free(y);
    }
    for (int t = 0; t < th; t++) free(scratch[t]);
    free(scratch);
    free(xp);
    free(x);
}

/* ---- 2. the backend on a 2-layer full-width model ---- */

typedef struct mix {
    const char *name;
    st_dtype embed, lm_head, qkv[2], o, gate_up, down[2];   /* [0]: more-bits layer */
} mix;

static void *bufs[64];
static int nbufs;

static phi3_weight wt(st_dtype d, int64_t rows, int64_t cols, size_t *total)
{
    size_t bytes;
    void *p = weights(d, rows, cols, &bytes);
    bufs[nbufs++] = p;
    *total += bytes;
    return (phi3_weight){p, d, rows, cols};
}

static void bench_model(int threads, int prefill, const mix *mx, double *bf16_dec, double *bf16_pre)
{
    phi3_model m;
    phi3_layer layers[2];
    memset(&m, 0, sizeof m);
    phi3_config *c = &m.cfg;
    c->hidden = 3072;
    c->n_heads = c->n_kv_heads = 32;
    c->head_dim = 96;
    c->n_layers = 2;
    c->intermediate = 8192;
    c->vocab = 2004;                       /* 32064 * 2 / 32 */
    c->rms_eps = 1e-5f;
    c->rope_theta = 10000;
    c->attn_factor = 1.0;
    c->original_max_pos = c->max_pos = 4096;
    size_t total = 0, read = 0;
    m.embed = wt(mx->embed, c->vocab, 3072, &total);
    m.norm = wt(ST_F32, 1, 3072, &total);
    m.lm_head = wt(mx->lm_head, c->vocab, 3072, &total);
    for (int l = 0; l < 2; l++) {
        layers[l].ln1 = wt(ST_F32, 1, 3072, &total);
        layers[l].ln2 = wt(ST_F32, 1, 3072, &total);
        layers[l].qkv = wt(mx->qkv[l], 9216, 3072, &total);
        layers[l].o = wt(mx->o, 3072, 3072, &total);
        layers[l].gate_up = wt(mx->gate_up, 16384, 3072, &total);
        layers[l].down = wt(mx->down[l], 3072, 8192, &total);
    }
    m.layers = layers;
    read = total - quant_row_bytes(mx->embed, 3072) * (size_t)(c->vocab - 1);   /* one embedding row */
    char err[256];
    backend *b = backend_cpu_new(&m, 1024, threads, NULL, err, sizeof err);
    if (!b) {
        fprintf(stderr, "quant_bench: %s\n", err);
        exit(1);
    }
    float *logits = malloc((size_t)c->vocab * sizeof(float));
    int32_t ids[1024];
    for (int i = 0; i < 1024; i++) ids[i] = (int32_t)(rnd() % (uint32_t)c->vocab);
    /* prefill */
    double t0 = now();
    b->ops->forward(b, ids, prefill, logits, 0);
    double pre = now() - t0;
    /* decode: median of 15 single-token steps */
    double dt[15];
    for (int s = 0; s < 15; s++) {
        t0 = now();
        b->ops->forward(b, ids + prefill + s, 1, logits, 0);
        dt[s] = now() - t0;
    }
    for (int i = 0; i < 15; i++)
        for (int j = i + 1; j < 15; j++)
            if (dt[j] < dt[i]) {
                double t = dt[i];
                dt[i] = dt[j];
                dt[j] = t;
            }
    double dec = dt[7];
    if (!*bf16_dec) {
        *bf16_dec = dec;
        *bf16_pre = pre;
    }
    printf("%-8s %8.1f MB %8.2f ms %7.2fx %8.1f GB/s   %8.1f tok/s %7.2fx\n", mx->name, read / 1e6, dec * 1e3,
           *bf16_dec / dec, read / dec / 1e9, prefill / pre, *bf16_pre / pre);
    b->ops->destroy(b);
    free(logits);
    for (int i = 0; i < nbufs; i++) free(bufs[i]);
    nbufs = 0;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 0, prefill = argc > 2 ? atoi(argv[2]) : 512;
    const char *parts = argc > 3 ? argv[3] : "012";
    if (prefill < 1 || prefill > 1000) prefill = 512;
    if (strchr(parts, '0')) bench_l2();
    pool *p = pool_new(threads);
    threads = pool_threads(p);
    if (strchr(parts, '1')) bench_gemv(p);
    if (strchr(parts, '3')) bench_ooc(p);
    pool_free(p);
    if (!strchr(parts, '2')) return 0;
    /* llama.cpp's Q4_K_M for phi3 (llama_tensor_get_type): token_embd Q4_K, output Q6_K,
     * attn_qkv and ffn_down Q6_K in the "more bits" layers (16 of 32), Q4_K elsewhere;
     * attn_output, ffn_up Q4_K. Q4_K_M': llama.cpp before attn_qkv counted as attn_v
     * (the 2024 files, Microsoft's own among them): attn_qkv Q5_K in every layer. Q8_0: everything Q8_0. Q4_0: everything Q4_0 but output
     * Q6_K (as llama.cpp does). */
    static const mix mixes[] = {
        {"bf16", ST_BF16, ST_BF16, {ST_BF16, ST_BF16}, ST_BF16, ST_BF16, {ST_BF16, ST_BF16}},
        {"Q8_0", ST_Q8_0, ST_Q8_0, {ST_Q8_0, ST_Q8_0}, ST_Q8_0, ST_Q8_0, {ST_Q8_0, ST_Q8_0}},
        {"Q4_K_M", ST_Q4_K, ST_Q6_K, {ST_Q6_K, ST_Q4_K}, ST_Q4_K, ST_Q4_K, {ST_Q6_K, ST_Q4_K}},
        {"Q4_K_M'", ST_Q4_K, ST_Q6_K, {ST_Q5_K, ST_Q5_K}, ST_Q4_K, ST_Q4_K, {ST_Q6_K, ST_Q4_K}},
        {"Q4_0", ST_Q4_0, ST_Q6_K, {ST_Q4_0, ST_Q4_0}, ST_Q4_0, ST_Q4_0, {ST_Q4_0, ST_Q4_0}},
    };
    printf("\nCPU backend, %d threads, 2-layer full-width Phi-3 (vocab 2004): decode = median of 15 steps, "
           "prefill = %d tokens\n", threads, prefill);
    printf("%-8s %11s %11s %8s %13s   %14s %8s\n", "weights", "read/token", "decode", "speedup", "weight GB/s",
           "prefill", "vs bf16");
    double bd = 0, bp = 0;
    for (size_t i = 0; i < sizeof mixes / sizeof *mixes; i++) bench_model(threads, prefill, &mixes[i], &bd, &bp);
    return 0;
}
