/* cuda_backend.cu: the CUDA backend of phi3-run behind decode/backend.h: weights uploaded
 * once (bf16) from the common loader, fp16 KV cache in device memory, cuBLAS for every
 * linear layer (cu_gemm_beta, the only cuBLAS call site, reached through cu_linear),
 * kernels/ for everything else. Quantized GGUF weights (opt-in, PHI3_CUDA_QUANT=1) stay
 * blocks on the device: GEMV kernels at decode, dequantized to bf16 for cuBLAS at prefill.
 * Built as the plug-in phi3-cuda.so that phi3-run loads on demand (decode/cuda_loader.c):
 * the tools start, and the CPU backend runs, on machines without the CUDA libraries. */
extern "C" {
#include "decode/backend.h"
#include "decode/rope.h"
#include "embed/model.h"
#include "embed/quant.h"
}
#include "kernels/kernels.cuh"
#include "kernels/fast.cuh"
#include "kernels/quant.cuh"

#include <cublas_v2.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Tokens per pass through the layer stack (bounds the activation buffers; a longer
 * prompt runs as consecutive chunks that attend to the cache of the earlier ones). */
#define CU_CHUNK 4096
/* Positions of logits computed per lm_head product (all-logits mode). */
#define CU_LOGIT_ROWS 64
/* Matrix products of at most this many rows take their input as bf16 hi + lo halves
 * (~16 significant bits): the weights are read once either way, so decode pays almost
 * nothing for float32-like accuracy, and a prompt of up to this many tokens (2x the
 * columns, still near the weight-bandwidth bound on an H100/H200, whose bf16 ridge is
 * ~200-300 FLOP/byte) pays little. Larger prefills are compute-bound and use hi only.
 * Measured on an H200 with 64 here: the 150-token tiny-longrope prompt was 2.03e-2 off
 * in relative L2 (bf16 activations), prompts <= 64 tokens ~2e-3.
 * $PHI3_CUDA_SPLIT_MAX overrides (0: never split). */
#define CU_SPLIT_MAX_DEFAULT 256
/* Split-KV workspace: partial results for this many (query, head) x split slots. */
#define CU_DECODE_SPLITS 1024

/* $PHI3_CUDA_TIMING (off by default; for tests/gpu/bench.sh): 1 = CUDA events around
 * every forward call, a line on stderr per prefill frame and a summary per run of decode
 * steps (GPU time, time in forward, interval between consecutive steps = the whole cycle
 * through the pipes); 2 = also a per-op timeline of each decode step (events between the
 * ops; the fast path then runs without its graph). */
enum { OP_EMBED, OP_NORM, OP_QKV, OP_ROPE, OP_ATTN, OP_SPLIT, OP_O, OP_RESID, OP_GATEUP,
       OP_SWIGLU, OP_DOWN, OP_LOGITS, OP_COPY, N_OPS };
static const char *const op_names[N_OPS] = {"embed", "rmsnorm", "qkv", "rope+kv", "attention",
    "split", "o", "residual", "gate_up", "swiglu", "down", "logits", "copies"};
#define TL_MAX_EV 1024

typedef struct cu_timing {
    int level;                          /* 0 off */
    cudaEvent_t e0, e1;
    double last_entry;                  /* host entry time of the previous decode step (0: none) */
    int seg_n, seg_cap, seg_ctx0;       /* the current run of decode steps */
    float *gpu, *host, *gap;            /* [seg_cap] ms per step; gap < 0: not measured */
    float *op_ms;                       /* [seg_cap][N_OPS] timeline */
    int tl_on;                          /* recording marks in this step */
    cudaEvent_t ev[TL_MAX_EV];
    unsigned char ev_op[TL_MAX_EV];
    int n_ev, ev_made;
} cu_timing;

/* A quantized weight kept as its blocks on the device (PHI3_CUDA_QUANT=1, opt-in): w NULL
 * for a bf16 one. */
typedef struct cu_q {
    const void *w;
    st_dtype t;
    size_t rb;                          /* bytes per row */
} cu_q;

typedef struct cu_layer {
    float *ln1, *ln2;                   /* [hidden] */
    bf16 *qkv;                          /* [(nh + 2 nkv) hd][hidden] */
    bf16 *o;                            /* [hidden][nh hd] */
    bf16 *gate_up;                      /* [2 inter][hidden] */
    bf16 *down;                         /* [hidden][inter] */
    cu_q qqkv, qo, qgate_up, qdown;     /* the same weights as blocks (bf16 pointer NULL) */
} cu_layer;

/* Everything the device work needs, passed explicitly (no globals). */
typedef struct cuda_ctx {
    cudaStream_t stream;
    cublasHandle_t blas;
    int sgemm_ex;                       /* cublasGemmEx refused bf16 -> f32: use SgemmEx */
    int n_sm;
    int split_max;                      /* see CU_SPLIT_MAX_DEFAULT */
    int attn_mode;                      /* 0 auto, 1 split-KV for every n, 2 flash for every n */
    /* weights */
    bf16 *embed, *lm_head;              /* [vocab][hidden]; lm_head == embed when tied */
    cu_q qlm_head;                      /* lm_head as blocks (PHI3_CUDA_QUANT) */
    float *xq;                          /* [split_max][act_cols]: float32 x of the quant GEMV */
    bf16 *wdq;                          /* [wdq_elems]: a quantized weight dequantized for a GEMM */
    size_t wdq_elems;
    float *norm;                        /* [hidden] */
    cu_layer *layers;                   /* host array [n_layers] of device pointers */
    size_t weight_bytes;
    /* KV cache: per layer [kv_cap][nkv hd] fp16, grown on demand */
    kvt **kc, **vc;                     /* host arrays [n_layers] */
    int kv_cap;
    int32_t *ctx_ids;                   /* host [ids_cap]: the context's token ids (a LongRoPE
                                           switch recomputes the context from them) */
    int ids_cap;
    /* RoPE */
    float *inv_freq[2];                 /* device [hd/2]: short (or plain), long */
    float attn_factor;
    /* activations for up to `chunk` tokens (rows double when split) */
    int chunk, rows;                    /* rows = max(chunk, 2 * split_max, 2 * CU_LOGIT_ROWS) */
    int act_cols, y_cols;
    float *x;                           /* [chunk][hidden] residual stream */
    bf16 *act;                          /* [rows][act_cols] bf16 input of the next product */
    float *y;                           /* [rows][y_cols] float32 output of a product */
    float *qf;                          /* [chunk][nh hd] rotated Q (split-KV path) */
    kvt *qb;                            /* [chunk][nh hd] rotated Q (flash path) */
    float *att;                         /* [chunk][nh hd] attention output */
    float *work;                        /* split-KV partials */
    size_t work_floats;
    int32_t *ids;                       /* [chunk] */
    float *logits;                      /* [2 * CU_LOGIT_ROWS][vocab] */
    int kv_gen;                         /* bumped whenever a kc/vc pointer changes */
    /* $PHI3_CUDA_FAST=1 (opt-in, unverified on a GPU): kernels/fast.cuh for decode steps,
     * captured as a CUDA graph; NaN-keeping RoPE/KV write and fk_attn_prefill in prefill */
    int fast;
    int nsplit;                         /* split-KV blocks per head of a fast decode step */
    int32_t *h_step;                    /* pinned host {id, pos} of the step */
    int32_t *d_step;                    /* device copy */
    float *h_logits;                    /* pinned host [vocab] */
    cudaGraph_t graph;
    cudaGraphExec_t gexec;
    int g_gen, g_long, graph_off;       /* the captured graph's kv_gen and rope mode */
    int kv_async;                       /* KV cache in stream-ordered memory (cu_kv_grow_async) */
    int pdl;                            /* PHI3_CUDA_FAST=2, sm_90+: dependent launch */
    int borrowed;                       /* weights (and wdq) belong to another backend
                                           (phi3_cuda_new_shared, opt-in) */
    float *h_batch;                     /* pinned host logits of a batched decode step
                                           ([CU_LOGIT_ROWS][vocab]) */
    cu_timing tm;
} cuda_ctx;

typedef struct cuda_backend {
    backend b;                          /* first: a backend * is a cuda_backend * */
    cuda_ctx c;
} cuda_backend;

/* ---- errors: every failing call is named with its file and line ---- */

static int cu_fail(backend *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int cu_fail(backend *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->err, sizeof b->err, fmt, ap);
    va_end(ap);
    return -1;
}

#define CU_TRY(b, call)                                                                     \
    do {                                                                                    \
        cudaError_t e_ = (call);                                                            \
        if (e_ != cudaSuccess)                                                              \
            return cu_fail((b), "cuda: %s: %s (%s:%d)", #call, cudaGetErrorString(e_),      \
                           __FILE__, __LINE__);                                             \
    } while (0)

static int cu_malloc(backend *b, void **p, size_t bytes, const char *what, const char *file,
                     int line)
{
    *p = NULL;
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        size_t fr = 0, tot = 0;
        cudaGetLastError();
        cudaMemGetInfo(&fr, &tot);
        *p = NULL;
        return cu_fail(b, "cuda: out of device memory: cudaMalloc of %zu bytes for %s failed: %s "
                       "(%zu of %zu bytes free) (%s:%d)", bytes, what, cudaGetErrorString(e),
                       fr, tot, file, line);
    }
    return 0;
}
#define CU_MALLOC(b, p, bytes, what)                                                        \
    do {                                                                                    \
        if (cu_malloc((b), (void **)&(p), (bytes), (what), __FILE__, __LINE__))             \
            return -1;                                                                      \
    } while (0)

/* ---- cuBLAS: the one place it is called ---- */

/* Y[ncols][N] (float32) = X[ncols][K] (bf16) * W[N][K]^T (bf16), float32 accumulation.
 * Row-major Y^T = W X^T is column-major C = A^T B with A = W (K x N, lda K), B = X. */
static int cu_gemm_beta(cuda_backend *cb, const bf16 *W, const bf16 *X, int ncols, int K, int N,
                        float *Y, float beta)
{
    const float alpha = 1.0f;
    cublasStatus_t st = CUBLAS_STATUS_NOT_SUPPORTED;
    if (!cb->c.sgemm_ex)
        st = cublasGemmEx(cb->c.blas, CUBLAS_OP_T, CUBLAS_OP_N, N, ncols, K, &alpha, W,
                          CUDA_R_16BF, K, X, CUDA_R_16BF, K, &beta, Y, CUDA_R_32F, N,
                          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st == CUBLAS_STATUS_NOT_SUPPORTED) {
        /* the same product through the float32-compute entry point (bf16 in, f32 out) */
        cb->c.sgemm_ex = 1;
        st = cublasSgemmEx(cb->c.blas, CUBLAS_OP_T, CUBLAS_OP_N, N, ncols, K, &alpha, W,
                           CUDA_R_16BF, K, X, CUDA_R_16BF, K, &beta, Y, CUDA_R_32F, N);
    }
    if (st != CUBLAS_STATUS_SUCCESS)
        return cu_fail(&cb->b, "cublas: %s(m=%d, n=%d, k=%d): %s (%s:%d)",
                       cb->c.sgemm_ex ? "cublasSgemmEx" : "cublasGemmEx", N, ncols, K,
                       cublasGetStatusString(st), __FILE__, __LINE__);
    return 0;
}

/* A linear layer Y = W X over `cols` product columns: cu_gemm_beta for a bf16 weight. A
 * quantized one (q->w, opt-in): when the input is split (cols = 2 n, hi then lo halves)
 * the float32 activations are rebuilt (hi + lo) and each token is one GEMV on the blocks,
 * the result in the hi half and zeros in the lo half (so the callers' hi + lo sums stay
 * as they are); otherwise the weight is dequantized to bf16 into c->wdq and multiplied by
 * cuBLAS. Declared before cu_blas_init, defined after the kernels it calls are in scope. */
static int cu_linear(cuda_backend *cb, const bf16 *W, const cu_q *q, const bf16 *X, int cols,
                     int split, int K, int N, float *Y, float beta)
{
    backend *b = &cb->b;
    cuda_ctx *c = &cb->c;
    if (!q || !q->w)
        return cu_gemm_beta(cb, W, X, cols, K, N, Y, beta);
    if (split) {
        const int n = cols / 2;
        if (beta != 0.0f)
            return cu_fail(b, "internal: a split quantized product with beta %g", beta);
        CU_TRY(b, kern_bf16_pair_f32(c->stream, X, X + (size_t)n * K, (size_t)n * K, c->xq));
        for (int t = 0; t < n; t++)
            CU_TRY(b, kern_qgemv(c->stream, q->t, q->w, q->rb, N, K, c->xq + (size_t)t * K,
                                 Y + (size_t)t * N));
        CU_TRY(b, cudaMemsetAsync(Y + (size_t)n * N, 0, (size_t)n * N * sizeof(float), c->stream));
        return 0;
    }
    if ((size_t)N * K > c->wdq_elems)
        return cu_fail(b, "internal: a %d x %d quantized weight exceeds the dequantization buffer", N, K);
    CU_TRY(b, kern_qdequant_bf16(c->stream, q->t, q->w, q->rb, N, K, c->wdq));
    return cu_gemm_beta(cb, c->wdq, X, cols, K, N, Y, beta);
}

static int cu_blas_init(cuda_backend *cb)
{
    cublasStatus_t st = cublasCreate(&cb->c.blas);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasSetStream(cb->c.blas, cb->c.stream);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasSetMathMode(cb->c.blas, CUBLAS_DEFAULT_MATH);
    if (st != CUBLAS_STATUS_SUCCESS)
        return cu_fail(&cb->b, "cublas: cublasCreate/SetStream/SetMathMode: %s (%s:%d)",
                       cublasGetStatusString(st), __FILE__, __LINE__);
    return 0;
}

static void cu_blas_free(cuda_backend *cb)
{
    if (cb->c.blas)
        cublasDestroy(cb->c.blas);
    cb->c.blas = NULL;
}

/* ---- weights ---- */

static uint16_t f32_to_bf16_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return 0x7fc0;                                  /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                    /* round to nearest even */
    return (uint16_t)(u >> 16);
}

/* Upload a [rows][cols] weight as bf16 (a BF16 file tensor is copied as is; F16/F32 are
 * converted on the host in pieces). */
static int cu_upload_matrix(cuda_backend *cb, const phi3_weight *w, bf16 **out, const char *what,
                            cu_q *q)
{
    backend *b = &cb->b;
    const size_t n = (size_t)w->rows * (size_t)w->cols;
    if (quant_is_block(w->dtype) && q) {
        /* opt-in: the blocks as they are; the products dequantize them (kernels/quant.cuh) */
        const size_t rb = quant_row_bytes(w->dtype, w->cols);
        void *d = NULL;
        CU_MALLOC(b, d, rb * (size_t)w->rows, what);
        cb->c.weight_bytes += rb * (size_t)w->rows;
        q->w = d;
        q->t = w->dtype;
        q->rb = rb;
        *out = NULL;
        CU_TRY(b, cudaMemcpy(d, w->data, rb * (size_t)w->rows, cudaMemcpyHostToDevice));
        return 0;
    }
    CU_MALLOC(b, *out, n * sizeof(bf16), what);
    cb->c.weight_bytes += n * sizeof(bf16);
    if (w->dtype == ST_BF16) {
        CU_TRY(b, cudaMemcpy(*out, w->data, n * sizeof(bf16), cudaMemcpyHostToDevice));
        return 0;
    }
    const size_t piece = (size_t)1 << 22;
    float *f = (float *)malloc(piece * sizeof(float));
    uint16_t *h = (uint16_t *)malloc(piece * sizeof(uint16_t));
    if (!f || !h) {
        free(f);
        free(h);
        return cu_fail(b, "out of host memory converting %s", what);
    }
    const size_t esz = st_dtype_size(w->dtype);
    const int blocks = quant_is_block(w->dtype);       /* the embedding table: dequantized */
    const size_t rb = blocks ? quant_row_bytes(w->dtype, w->cols) : 0;
    const size_t step = blocks ? piece / (size_t)w->cols * (size_t)w->cols : piece;
    if (blocks && (size_t)w->cols > piece) {
        free(f);
        free(h);
        return cu_fail(b, "%s: rows of %lld columns are too long", what, (long long)w->cols);
    }
    for (size_t i = 0; i < n; i += step) {
        size_t k = n - i < step ? n - i : step;
        if (blocks)
            for (size_t r = 0; r < k / (size_t)w->cols; r++)
                quant_dequant_row(w->dtype, (const char *)w->data + (i / (size_t)w->cols + r) * rb,
                                  f + r * (size_t)w->cols, 0, w->cols);
        else
            model_to_f32(w->dtype, (const char *)w->data + i * esz, f, k);
        for (size_t j = 0; j < k; j++)
            h[j] = f32_to_bf16_bits(f[j]);
        cudaError_t e = cudaMemcpy(*out + i, h, k * sizeof(uint16_t), cudaMemcpyHostToDevice);
        if (e != cudaSuccess) {
            free(f);
            free(h);
            return cu_fail(b, "cuda: cudaMemcpy(%s): %s (%s:%d)", what, cudaGetErrorString(e),
                           __FILE__, __LINE__);
        }
    }
    free(f);
    free(h);
    return 0;
}

/* Upload a vector (norm weight) as float32. */
static int cu_upload_vector(cuda_backend *cb, const phi3_weight *w, float **out, const char *what)
{
    backend *b = &cb->b;
    const size_t n = (size_t)w->rows * (size_t)w->cols;
    CU_MALLOC(b, *out, n * sizeof(float), what);
    cb->c.weight_bytes += n * sizeof(float);
    float *f = (float *)malloc(n * sizeof(float));
    if (!f)
        return cu_fail(b, "out of host memory converting %s", what);
    model_to_f32(w->dtype, w->data, f, n);
    cudaError_t e = cudaMemcpy(*out, f, n * sizeof(float), cudaMemcpyHostToDevice);
    free(f);
    if (e != cudaSuccess)
        return cu_fail(b, "cuda: cudaMemcpy(%s): %s (%s:%d)", what, cudaGetErrorString(e),
                       __FILE__, __LINE__);
    return 0;
}

static int cu_upload_weights(cuda_backend *cb)
{
    const phi3_model *m = cb->b.m;
    const phi3_config *cf = &m->cfg;
    char what[96];
    cuda_ctx *c = &cb->c;
    if (cu_upload_matrix(cb, &m->embed, &c->embed, "model.embed_tokens.weight", NULL) ||
        cu_upload_vector(cb, &m->norm, &cb->c.norm, "model.norm.weight"))
        return -1;
    if (m->lm_head.data == m->embed.data)
        cb->c.lm_head = cb->c.embed;                    /* tied: one copy */
    else if (cu_upload_matrix(cb, &m->lm_head, &c->lm_head, "lm_head.weight", &c->qlm_head))
        return -1;
    cb->c.layers = (cu_layer *)calloc((size_t)cf->n_layers, sizeof(cu_layer));
    if (!cb->c.layers)
        return cu_fail(&cb->b, "out of host memory");
    for (int l = 0; l < cf->n_layers; l++) {
        const phi3_layer *L = &m->layers[l];
        cu_layer *D = &cb->c.layers[l];
        snprintf(what, sizeof what, "model.layers.%d weights", l);
        if (cu_upload_vector(cb, &L->ln1, &D->ln1, what) ||
            cu_upload_vector(cb, &L->ln2, &D->ln2, what) ||
            cu_upload_matrix(cb, &L->qkv, &D->qkv, what, &D->qqkv) ||
            cu_upload_matrix(cb, &L->o, &D->o, what, &D->qo) ||
            cu_upload_matrix(cb, &L->gate_up, &D->gate_up, what, &D->qgate_up) ||
            cu_upload_matrix(cb, &L->down, &D->down, what, &D->qdown))
            return -1;
    }
    return 0;
}

/* Device bytes of a weight matrix: bf16, or its blocks. */
static size_t cu_weight_bytes(const phi3_weight *w)
{
    return quant_is_block(w->dtype) ? quant_row_bytes(w->dtype, w->cols) * (size_t)w->rows
                                    : (size_t)w->rows * w->cols * 2;
}

/* Elements of the largest quantized weight (the dequantization buffer of cu_linear), 0 for
 * a model without block types. */
static size_t cu_quant_max_elems(const phi3_model *m)
{
    size_t mx = 0;
    const phi3_weight *ws[4];
    if (m->lm_head.data != m->embed.data && quant_is_block(m->lm_head.dtype))
        mx = (size_t)m->lm_head.rows * m->lm_head.cols;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const phi3_layer *L = &m->layers[l];
        ws[0] = &L->qkv, ws[1] = &L->o, ws[2] = &L->gate_up, ws[3] = &L->down;
        for (int i = 0; i < 4; i++)
            if (quant_is_block(ws[i]->dtype) && (size_t)ws[i]->rows * ws[i]->cols > mx)
                mx = (size_t)ws[i]->rows * ws[i]->cols;
    }
    return mx;
}

/* ---- KV cache ---- */

static size_t cu_kv_bytes_per_pos(const phi3_config *cf)
{
    return (size_t)cf->n_layers * 2 * (size_t)cf->n_kv_heads * cf->head_dim * sizeof(kvt);
}

/* The KV capacity an attempt to hold need positions asks for: double the current one
 * (at least 256) first, exactly need on the retry; never above max_ctx (then < need). */
static long cu_kv_cap(const cuda_backend *cb, int attempt, int need)
{
    long cap = attempt == 0 ? (long)cb->c.kv_cap * 2 : need;
    if (cap < need)
        cap = need;
    if (cap < 256)
        cap = 256;
    if (cap > cb->b.max_ctx)
        cap = cb->b.max_ctx;
    return cap;
}

/* The opt-in path's growth (kv_async): stream-ordered allocations (cudaMallocAsync), the
 * held positions copied and the old buffers released (cudaFreeAsync) in stream order: no
 * host synchronisation and no device-wide one (cudaFree), so a decode step that crosses
 * the capacity does not stall the pipeline. A failed allocation frees the new buffers made
 * so far; the cache then stays as it was. */
static int cu_kv_grow_async(cuda_backend *cb, int need)
{
    backend *b = &cb->b;
    cuda_ctx *c = &cb->c;
    const phi3_config *cf = &b->m->cfg;
    const int L = cf->n_layers;
    const size_t kvdim = (size_t)cf->n_kv_heads * cf->head_dim;
    const size_t per_pos = cu_kv_bytes_per_pos(cf);
    kvt **fresh = (kvt **)calloc((size_t)2 * L, sizeof(kvt *));
    if (!fresh)
        return cu_fail(b, "out of host memory");
    for (int attempt = 0; attempt < 2; attempt++) {
        const long cap = cu_kv_cap(cb, attempt, need);
        if (cap < need) {
            free(fresh);
            return cu_fail(b, "context of %d positions exceeds the limit of %d", need, b->max_ctx);
        }
        size_t fr = 0, tot = 0;
        cudaError_t e = cudaMemGetInfo(&fr, &tot);
        /* the new cache whole, the old one is released after the copies */
        const size_t add = (size_t)cap * per_pos;
        int ok = e == cudaSuccess && add <= fr;
        for (int i = 0; i < 2 * L && ok; i++)
            if (cudaMallocAsync((void **)&fresh[i], (size_t)cap * kvdim * sizeof(kvt), c->stream) !=
                cudaSuccess) {
                fresh[i] = NULL;
                ok = 0;
            }
        if (!ok) {
            cudaGetLastError();
            for (int i = 0; i < 2 * L; i++) {
                if (fresh[i])
                    cudaFreeAsync(fresh[i], c->stream);
                fresh[i] = NULL;
            }
            if (attempt == 0 && cap > need)
                continue;
            free(fresh);
            return cu_fail(b, "out of device memory for a context of %d positions: the KV cache "
                           "needs %zu bytes (%zu per position) but only %zu of %zu bytes are free "
                           "(try a smaller --ctx)", need, (size_t)cap * per_pos, per_pos, fr, tot);
        }
        for (int i = 0; i < 2 * L; i++) {
            kvt **slot = i < L ? &c->kc[i] : &c->vc[i - L];
            if (*slot) {
                if (b->n_ctx > 0 && cudaMemcpyAsync(fresh[i], *slot, (size_t)b->n_ctx * kvdim *
                                                    sizeof(kvt), cudaMemcpyDeviceToDevice,
                                                    c->stream) != cudaSuccess) {
                    free(fresh);
                    return cu_fail(b, "cuda: cudaMemcpyAsync(KV cache): %s (%s:%d)",
                                   cudaGetErrorString(cudaGetLastError()), __FILE__, __LINE__);
                }
                cudaFreeAsync(*slot, c->stream);
            }
            *slot = fresh[i];
            fresh[i] = NULL;
        }
        c->kv_gen++;
        c->kv_cap = (int)cap;
        free(fresh);
        return 0;
    }
    free(fresh);
    return cu_fail(b, "out of device memory for a context of %d positions", need);
}

/* Room for need positions: grow every layer's K and V (new allocation, copy the positions
 * held, free the old one). Grows geometrically up to max_ctx, falling back to exactly need. */
static int cu_kv_reserve(cuda_backend *cb, int need)
{
    backend *b = &cb->b;
    cuda_ctx *c = &cb->c;
    const phi3_config *cf = &b->m->cfg;
    if (need <= c->kv_cap)
        return 0;
    if (c->kv_async)
        return cu_kv_grow_async(cb, need);
    const size_t kvdim = (size_t)cf->n_kv_heads * cf->head_dim;
    const size_t per_pos = cu_kv_bytes_per_pos(cf);
    for (int attempt = 0; attempt < 2; attempt++) {
        const long cap = cu_kv_cap(cb, attempt, need);
        if (cap < need)
            return cu_fail(b, "context of %d positions exceeds the limit of %d", need, b->max_ctx);
        size_t fr = 0, tot = 0;
        CU_TRY(b, cudaMemGetInfo(&fr, &tot));
        /* one layer's K and V are held twice while they are copied */
        const size_t add = (size_t)(cap - c->kv_cap) * per_pos + 2 * (size_t)cap * kvdim * 2;
        if (add > fr) {
            if (attempt == 0 && cap > need)
                continue;
            return cu_fail(b, "out of device memory for a context of %d positions: the KV cache "
                           "needs %zu bytes (%zu per position, %zu more than now) but only %zu of "
                           "%zu bytes are free (try a smaller --ctx)", need,
                           (size_t)need * per_pos, per_pos, add, fr, tot);
        }
        int ok = 1;
        for (int l = 0; l < cf->n_layers && ok; l++) {
            for (int kv = 0; kv < 2 && ok; kv++) {
                kvt **slot = kv == 0 ? &c->kc[l] : &c->vc[l];
                kvt *p = NULL;
                if (cudaMalloc((void **)&p, (size_t)cap * kvdim * sizeof(kvt)) != cudaSuccess) {
                    cudaGetLastError();
                    ok = 0;
                    break;
                }
                if (*slot) {
                    cudaError_t e = cudaSuccess;
                    if (b->n_ctx > 0)
                        e = cudaMemcpyAsync(p, *slot, (size_t)b->n_ctx * kvdim * sizeof(kvt),
                                            cudaMemcpyDeviceToDevice, c->stream);
                    if (e == cudaSuccess)
                        e = cudaStreamSynchronize(c->stream);
                    if (e != cudaSuccess) {         /* the new buffer is not leaked */
                        cudaFree(p);
                        return cu_fail(b, "cuda: moving the KV cache of layer %d: %s (%s:%d)", l,
                                       cudaGetErrorString(e), __FILE__, __LINE__);
                    }
                    e = cudaFree(*slot);
                    *slot = p;
                    c->kv_gen++;
                    if (e != cudaSuccess)
                        return cu_fail(b, "cuda: cudaFree(KV cache of layer %d): %s (%s:%d)", l,
                                       cudaGetErrorString(e), __FILE__, __LINE__);
                    continue;
                }
                *slot = p;
                c->kv_gen++;
            }
        }
        if (!ok) {
            /* Layers already moved keep their larger buffers (all hold >= kv_cap). */
            if (attempt == 0 && cap > need)
                continue;
            return cu_fail(b, "out of device memory for a context of %d positions: the KV cache "
                           "needs %zu bytes (%zu per position) (try a smaller --ctx)", need,
                           (size_t)need * per_pos, per_pos);
        }
        c->kv_cap = (int)cap;
        return 0;
    }
    return cu_fail(b, "out of device memory for a context of %d positions", need);
}

/* Room for need token ids of the context (host). */
static int cu_ids_reserve(cuda_backend *cb, int need)
{
    cuda_ctx *c = &cb->c;
    if (need <= c->ids_cap)
        return 0;
    long cap = c->ids_cap ? c->ids_cap : 256;
    while (cap < need)
        cap *= 2;
    int32_t *p = (int32_t *)realloc(c->ctx_ids, (size_t)cap * sizeof *p);
    if (!p)
        return cu_fail(&cb->b, "out of host memory for %ld token ids", cap);
    c->ctx_ids = p;
    c->ids_cap = (int)cap;
    return 0;
}

/* ---- $PHI3_CUDA_TIMING: events around each forward, per-op timeline (off by default) ---- */

static double cu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_float(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* Quantile q of the n values of v with stride `stride` (v is not changed). */
static float quantile(const float *v, int n, int stride, double q, float *tmp)
{
    int k = 0;
    for (int i = 0; i < n; i++)
        if (v[(size_t)i * stride] >= 0.f)
            tmp[k++] = v[(size_t)i * stride];
    if (!k)
        return -1.f;
    qsort(tmp, (size_t)k, sizeof *tmp, cmp_float);
    return tmp[(int)(q * (k - 1) + 0.5)];
}

/* Print and forget the current run of decode steps. */
static void tm_flush(cuda_backend *cb)
{
    cu_timing *t = &cb->c.tm;
    if (!t->level || t->seg_n == 0) {
        t->seg_n = 0;
        t->last_entry = 0;
        return;
    }
    float *tmp = (float *)malloc((size_t)t->seg_n * sizeof(float));
    if (tmp) {
        const int n = t->seg_n;
        fprintf(stderr, "phi3-run: cuda timing: decode ctx %d..%d steps %d path %s: "
                "gpu ms median %.4f p10 %.4f p90 %.4f; forward ms median %.4f; "
                "interval ms median %.4f p10 %.4f p90 %.4f\n",
                t->seg_ctx0, t->seg_ctx0 + n - 1, n,
                !cb->c.fast ? "default" : cb->c.gexec && t->level < 2
                    ? (cb->c.pdl ? "pdl-graph" : "fast-graph") : (cb->c.pdl ? "pdl" : "fast"),
                quantile(t->gpu, n, 1, 0.5, tmp), quantile(t->gpu, n, 1, 0.1, tmp),
                quantile(t->gpu, n, 1, 0.9, tmp), quantile(t->host, n, 1, 0.5, tmp),
                quantile(t->gap, n, 1, 0.5, tmp), quantile(t->gap, n, 1, 0.1, tmp),
                quantile(t->gap, n, 1, 0.9, tmp));
        if (t->level >= 2 && t->op_ms) {
            char line[1024];
            int len = snprintf(line, sizeof line, "phi3-run: cuda timeline: decode ctx %d..%d, "
                               "median ms per step:", t->seg_ctx0, t->seg_ctx0 + n - 1);
            float sum = 0.f;
            for (int op = 0; op < N_OPS && len < (int)sizeof line; op++) {
                const float v = quantile(t->op_ms + op, n, N_OPS, 0.5, tmp);
                if (v > 0.f) {
                    len += snprintf(line + len, sizeof line - (size_t)len, " %s %.4f",
                                    op_names[op], v);
                    sum += v;
                }
            }
            fprintf(stderr, "%s; sum %.4f\n", line, sum);
        }
        free(tmp);
    }
    t->seg_n = 0;
    t->last_entry = 0;
}

/* Record a timeline mark: the GPU time since the previous mark is charged to op. */
static void tm_mark(cuda_ctx *c, int op)
{
    cu_timing *t = &c->tm;
    if (!t->tl_on || t->n_ev >= TL_MAX_EV)
        return;
    if (t->n_ev >= t->ev_made) {
        if (cudaEventCreate(&t->ev[t->n_ev]) != cudaSuccess) {
            cudaGetLastError();
            t->tl_on = 0;
            return;
        }
        t->ev_made++;
    }
    t->ev_op[t->n_ev] = (unsigned char)op;
    cudaEventRecord(t->ev[t->n_ev++], c->stream);
}
#define TL(op) tm_mark(c, (op))

/* Before a forward of n tokens at context ctx: returns the host entry time. */
static double tm_begin(cuda_backend *cb, int n)
{
    cu_timing *t = &cb->c.tm;
    const double now = cu_now();
    if (!t->level)
        return now;
    if (n != 1)
        tm_flush(cb);
    cudaEventRecord(t->e0, cb->c.stream);
    t->n_ev = 0;
    t->tl_on = t->level >= 2 && n == 1;
    tm_mark(&cb->c, OP_COPY);          /* the first mark: the step's start */
    return now;
}

/* After a successful forward (its work finished: every forward ends with a sync). */
static void tm_end(cuda_backend *cb, int n, int pos0, double entry)
{
    cu_timing *t = &cb->c.tm;
    if (!t->level)
        return;
    float gpu = -1.f;
    cudaEventRecord(t->e1, cb->c.stream);
    if (cudaEventSynchronize(t->e1) == cudaSuccess)
        cudaEventElapsedTime(&gpu, t->e0, t->e1);
    cudaGetLastError();
    const double now = cu_now();
    if (n != 1) {
        fprintf(stderr, "phi3-run: cuda timing: prefill n %d at pos %d path %s: gpu ms %.4f; "
                "forward ms %.4f\n", n, pos0, cb->c.fast ? "fast" : "default", gpu,
                (now - entry) * 1e3);
        t->last_entry = 0;
        t->tl_on = 0;
        return;
    }
    if (t->seg_n == t->seg_cap) {
        const int cap = t->seg_cap ? 2 * t->seg_cap : 256;
        float *g = (float *)realloc(t->gpu, (size_t)cap * sizeof(float));
        if (g)
            t->gpu = g;
        float *h = (float *)realloc(t->host, (size_t)cap * sizeof(float));
        if (h)
            t->host = h;
        float *p = (float *)realloc(t->gap, (size_t)cap * sizeof(float));
        if (p)
            t->gap = p;
        float *o = (float *)realloc(t->op_ms, (size_t)cap * N_OPS * sizeof(float));
        if (o)
            t->op_ms = o;
        if (!g || !h || !p || !o) {
            t->tl_on = 0;
            return;                     /* timing is best effort */
        }
        t->seg_cap = cap;
    }
    const int k = t->seg_n++;
    if (k == 0)
        t->seg_ctx0 = pos0;
    t->gpu[k] = gpu;
    t->host[k] = (float)((now - entry) * 1e3);
    t->gap[k] = t->last_entry > 0 ? (float)((entry - t->last_entry) * 1e3) : -1.f;
    t->last_entry = entry;
    for (int op = 0; op < N_OPS; op++)
        t->op_ms[(size_t)k * N_OPS + op] = t->tl_on ? 0.f : -1.f;
    for (int e = 1; t->tl_on && e < t->n_ev; e++) {
        float ms = 0.f;
        if (cudaEventElapsedTime(&ms, t->ev[e - 1], t->ev[e]) == cudaSuccess)
            t->op_ms[(size_t)k * N_OPS + t->ev_op[e]] += ms;
    }
    cudaGetLastError();
    t->tl_on = 0;
}

static void tm_free(cuda_backend *cb)
{
    cu_timing *t = &cb->c.tm;
    if (!t->level)
        return;
    tm_flush(cb);
    for (int e = 0; e < t->ev_made; e++)
        cudaEventDestroy(t->ev[e]);
    cudaEventDestroy(t->e0);
    cudaEventDestroy(t->e1);
    free(t->gpu);
    free(t->host);
    free(t->gap);
    free(t->op_ms);
    t->level = 0;
}

/* ---- forward ---- */

/* Final norm + lm_head for rows [r0, r0 + nr) of the chunk's residual stream; logits of
 * row r go to host[(r - r0) * vocab]. */
static int cu_logits(cuda_backend *cb, int r0, int nr, float *host)
{
    backend *b = &cb->b;
    cuda_ctx *c = &cb->c;
    const phi3_config *cf = &b->m->cfg;
    const int H = cf->hidden, V = cf->vocab;
    for (int done = 0; done < nr; done += CU_LOGIT_ROWS) {
        const int k = nr - done < CU_LOGIT_ROWS ? nr - done : CU_LOGIT_ROWS;
        const int split = k <= c->split_max;
        CU_TRY(b, kern_rmsnorm(c->stream, c->x + (size_t)(r0 + done) * H, c->norm, k, H,
                               cf->rms_eps, c->act, split ? c->act + (size_t)k * H : NULL));
        TL(OP_NORM);
        if (cu_linear(cb, c->lm_head, &c->qlm_head, c->act, split ? 2 * k : k, split, H, V, c->logits, 0.0f))
            return -1;
        if (split)
            CU_TRY(b, kern_add(c->stream, c->logits, c->logits, c->logits + (size_t)k * V,
                               (size_t)k * V));
        TL(OP_LOGITS);
        CU_TRY(b, cudaMemcpyAsync(host + (size_t)done * V, c->logits, (size_t)k * V * sizeof(float),
                                  cudaMemcpyDeviceToHost, c->stream));
        TL(OP_COPY);
        CU_TRY(b, cudaStreamSynchronize(c->stream));
    }
    return 0;
}

/* x += W act for n tokens (W [hidden][K]; act holds hi and lo halves when split). Opt-in
 * fast and unsplit: the residual add is the product's epilogue (beta = 1 into x); else
 * the product goes to y and a kernel adds it (both halves) to x. q: W as quantized blocks
 * (cu_linear). op: the product's mark. */
static int cu_gemm_residual(cuda_backend *cb, const bf16 *W, const cu_q *q, int n, int K, int split, int op)
{
    backend *b = &cb->b;
    cuda_ctx *c = &cb->c;
    const int H = b->m->cfg.hidden, cols = split ? 2 * n : n;
    cudaStream_t s = c->stream;
    if (c->fast && !split) {
        if (cu_linear(cb, W, q, c->act, cols, split, K, H, c->x, 1.0f))
            return -1;
        TL(op);
        return 0;
    }
    if (cu_linear(cb, W, q, c->act, cols, split, K, H, c->y, 0.0f))
        return -1;
    TL(op);
    CU_TRY(b, kern_residual_add(s, c->x, c->y, split ? c->y + (size_t)n * H : NULL,
                                (size_t)n * H));
    TL(OP_RESID);
    return 0;
}

/* One chunk of n <= chunk tokens at positions pos0.. through every layer. */
static int cu_chunk(cuda_backend *cb, const int32_t *ids, int n, int pos0, int use_long)
{
    backend *b = &cb->b;
    cuda_ctx *c = &cb->c;
    const phi3_config *cf = &b->m->cfg;
    const int H = cf->hidden, nh = cf->n_heads, nkv = cf->n_kv_heads, hd = cf->head_dim;
    const int I = cf->intermediate, qdim = nh * hd, qkvdim = (nh + 2 * nkv) * hd;
    const int split = n <= c->split_max;
    const int cols = split ? 2 * n : n;
    const int flash = c->attn_mode == 2 || (c->attn_mode == 0 && n > 1);
    const int window = cf->sliding_window > 0 ? cf->sliding_window : 0;
    cudaStream_t s = c->stream;

    CU_TRY(b, cudaMemcpyAsync(c->ids, ids, (size_t)n * sizeof(int32_t), cudaMemcpyHostToDevice, s));
    TL(OP_COPY);
    CU_TRY(b, kern_embed(s, c->embed, c->ids, n, H, c->x));
    TL(OP_EMBED);
    for (int l = 0; l < cf->n_layers; l++) {
        const cu_layer *L = &c->layers[l];
        /* attention block: x += o_proj(attn(rope(qkv_proj(ln1(x))))) */
        CU_TRY(b, kern_rmsnorm(s, c->x, L->ln1, n, H, cf->rms_eps, c->act,
                               split ? c->act + (size_t)n * H : NULL));
        TL(OP_NORM);
        if (cu_linear(cb, L->qkv, &L->qqkv, c->act, cols, split, H, qkvdim, c->y, 0.0f))
            return -1;
        TL(OP_QKV);
        if (c->fast) {
            /* opt-in: hi + lo halves summed first, then the NaN-keeping RoPE + KV write */
            if (split)
                CU_TRY(b, kern_add(s, c->y, c->y, c->y + (size_t)n * qkvdim, (size_t)n * qkvdim));
            CU_TRY(b, fk_rope_qkv(s, c->y, n, NULL, pos0, nh, nkv, hd, c->inv_freq[use_long],
                                  c->attn_factor, flash ? NULL : c->qf, flash ? c->qb : NULL,
                                  c->kc[l], c->vc[l], 0));
        } else {
            CU_TRY(b, kern_rope_qkv(s, c->y, split ? c->y + (size_t)n * qkvdim : NULL, n, pos0, nh,
                                    nkv, hd, c->inv_freq[use_long], c->attn_factor,
                                    flash ? NULL : c->qf, flash ? c->qb : NULL, c->kc[l],
                                    c->vc[l]));
        }
        TL(OP_ROPE);
        if (flash && c->fast)
            CU_TRY(b, fk_attn_prefill(s, c->qb, c->kc[l], c->vc[l], n, pos0, nh, nkv, hd, window,
                                      c->att));
        else if (flash)
            CU_TRY(b, kern_attn_prefill(s, c->qb, c->kc[l], c->vc[l], n, pos0, nh, nkv, hd, window,
                                        c->att));
        else
            CU_TRY(b, kern_attn_decode(s, c->qf, c->kc[l], c->vc[l], n, pos0, nh, nkv, hd, window,
                                       c->work, c->work_floats, c->n_sm, c->att));
        TL(OP_ATTN);
        CU_TRY(b, kern_split_bf16(s, c->att, c->act, split ? c->act + (size_t)n * qdim : NULL,
                                  (size_t)n * qdim));
        TL(OP_SPLIT);
        if (cu_gemm_residual(cb, L->o, &L->qo, n, qdim, split, OP_O))
            return -1;
        /* MLP block: x += down(up * silu(gate)) of ln2(x) */
        CU_TRY(b, kern_rmsnorm(s, c->x, L->ln2, n, H, cf->rms_eps, c->act,
                               split ? c->act + (size_t)n * H : NULL));
        TL(OP_NORM);
        if (cu_linear(cb, L->gate_up, &L->qgate_up, c->act, cols, split, H, 2 * I, c->y, 0.0f))
            return -1;
        TL(OP_GATEUP);
        CU_TRY(b, kern_swiglu(s, c->y, split ? c->y + (size_t)n * 2 * I : NULL, n, I, c->act,
                              split ? c->act + (size_t)n * I : NULL));
        TL(OP_SWIGLU);
        if (cu_gemm_residual(cb, L->down, &L->qdown, n, I, split, OP_DOWN))
            return -1;
    }
    return 0;
}

/* LongRoPE: the factors follow the length of the whole sequence. When the mode changes,
 * the cached context [0, n_ctx) is recomputed from its ids in the new mode (what a fresh
 * pass gives; a re-rotation of cached keys would leave layers >= 1 stale). On failure the
 * context keeps the positions already recomputed. */
static int cu_set_rope_mode(cuda_backend *cb, int use_long)
{
    backend *b = &cb->b;
    if (use_long == b->rope_long)
        return 0;
    const int n = b->n_ctx;
    b->n_ctx = 0;
    b->rope_long = use_long;
    for (int done = 0; done < n;) {
        const int k = n - done < cb->c.chunk ? n - done : cb->c.chunk;
        if (cu_chunk(cb, cb->c.ctx_ids + done, k, done, use_long))
            return -1;
        CU_TRY(b, cudaStreamSynchronize(cb->c.stream));
        done += k;
        b->n_ctx = done;
    }
    return 0;
}

/* ---- opt-in fast decode step ($PHI3_CUDA_FAST=1; kernels/fast.cuh) ---- */

/* Enqueue one decode step reading {id, pos} from c->h_step (pinned): the id/pos upload,
 * embedding, every layer, the logits into c->h_logits (pinned). No host sync, no cuBLAS,
 * no allocation: the sequence can be captured as a graph. */
static int cu_fast_enqueue(cuda_backend *cb, int use_long)
{
    backend *b = &cb->b;
    cuda_ctx *c = &cb->c;
    const phi3_config *cf = &b->m->cfg;
    const int H = cf->hidden, nh = cf->n_heads, nkv = cf->n_kv_heads, hd = cf->head_dim;
    const int I = cf->intermediate, V = cf->vocab, qdim = nh * hd, qkvdim = (nh + 2 * nkv) * hd;
    const int window = cf->sliding_window > 0 ? cf->sliding_window : 0;
    const float eps = (float)cf->rms_eps;
    cudaStream_t s = c->stream;
    CU_TRY(b, cudaMemcpyAsync(c->d_step, c->h_step, 2 * sizeof(int32_t), cudaMemcpyHostToDevice,
                              s));
    TL(OP_COPY);
    const int pdl = c->pdl;
    CU_TRY(b, fk_embed1(s, c->embed, c->d_step, H, c->x, pdl));
    TL(OP_EMBED);
    for (int l = 0; l < cf->n_layers; l++) {
        const cu_layer *L = &c->layers[l];
        CU_TRY(b, fk_gemv(s, L->qkv, qkvdim, H, c->x, L->ln1, eps, FK_STORE, c->y, pdl));
        TL(OP_QKV);
        CU_TRY(b, fk_rope_qkv(s, c->y, 1, c->d_step + 1, 0, nh, nkv, hd, c->inv_freq[use_long],
                              c->attn_factor, c->qf, NULL, c->kc[l], c->vc[l], pdl));
        TL(OP_ROPE);
        CU_TRY(b, fk_attn_decode(s, c->qf, c->kc[l], c->vc[l], c->d_step + 1, nh, nkv, hd, window,
                                 c->nsplit, c->work, c->work_floats, c->att, pdl));
        TL(OP_ATTN);
        CU_TRY(b, fk_gemv(s, L->o, H, qdim, c->att, NULL, 0.f, FK_ADD, c->x, pdl));
        TL(OP_O);
        CU_TRY(b, fk_gemv(s, L->gate_up, 2 * I, H, c->x, L->ln2, eps, FK_SWIGLU, c->y, pdl));
        TL(OP_GATEUP);
        CU_TRY(b, fk_gemv(s, L->down, H, I, c->y, NULL, 0.f, FK_ADD, c->x, pdl));
        TL(OP_DOWN);
    }
    CU_TRY(b, fk_gemv(s, c->lm_head, V, H, c->x, c->norm, eps, FK_STORE, c->logits, pdl));
    TL(OP_LOGITS);
    CU_TRY(b, cudaMemcpyAsync(c->h_logits, c->logits, (size_t)V * sizeof(float),
                              cudaMemcpyDeviceToHost, s));
    TL(OP_COPY);
    return 0;
}

static void cu_graph_drop(cuda_ctx *c)
{
    if (c->gexec)
        cudaGraphExecDestroy(c->gexec);
    if (c->graph)
        cudaGraphDestroy(c->graph);
    c->gexec = NULL;
    c->graph = NULL;
}

/* Capture the step as a graph for the current cache buffers and rope mode. A failed
 * capture leaves the step to direct launches (graph_off) instead of failing the run. */
static int cu_graph_capture(cuda_backend *cb, int use_long)
{
    cuda_ctx *c = &cb->c;
    cu_graph_drop(c);
    CU_TRY(&cb->b, cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    const int rc = cu_fast_enqueue(cb, use_long);
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(c->stream, &g);
    if (rc || e != cudaSuccess || !g) {
        cudaGetLastError();
        if (g)
            cudaGraphDestroy(g);
        c->graph_off = 1;
        return 0;
    }
    c->graph = g;
    if (cudaGraphInstantiateWithFlags(&c->gexec, g, 0) != cudaSuccess) {
        cudaGetLastError();
        cu_graph_drop(c);
        c->graph_off = 1;
        return 0;
    }
    c->g_gen = c->kv_gen;
    c->g_long = use_long;
    return 0;
}

/* One token at position b->n_ctx (the cache and ids already reserved, the rope mode set). */
static int cu_fast_step(cuda_backend *cb, int32_t id, int use_long, float *logits)
{
    backend *b = &cb->b;
    cuda_ctx *c = &cb->c;
    c->h_step[0] = id;
    c->h_step[1] = b->n_ctx;
    if (c->graph_off || c->tm.tl_on) {
        if (cu_fast_enqueue(cb, use_long))
            return -1;
    } else {
        if ((!c->gexec || c->g_gen != c->kv_gen || c->g_long != use_long) &&
            cu_graph_capture(cb, use_long))
            return -1;
        if (c->graph_off) {
            if (cu_fast_enqueue(cb, use_long))
                return -1;
        } else {
            CU_TRY(b, cudaGraphLaunch(c->gexec, c->stream));
        }
    }
    CU_TRY(b, cudaStreamSynchronize(c->stream));
    memcpy(logits, c->h_logits, (size_t)b->m->cfg.vocab * sizeof(float));
    return 0;
}

static int cu_forward(backend *b, const int32_t *ids, int n, float *logits, int all)
{
    cuda_backend *cb = (cuda_backend *)b;
    cuda_ctx *c = &cb->c;
    const phi3_config *cf = &b->m->cfg;
    b->err[0] = 0;
    if (n <= 0)
        return n < 0 ? cu_fail(b, "negative token count") : 0;
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= cf->vocab)
            return cu_fail(b, "token id %d out of range [0, %d)", ids[i], cf->vocab);
    if ((long)b->n_ctx + n > b->max_ctx)
        return cu_fail(b, "context of %ld tokens exceeds the limit of %d", (long)b->n_ctx + n,
                       b->max_ctx);
    const double t_entry = tm_begin(cb, n);
    if (cu_ids_reserve(cb, b->n_ctx + n) || cu_kv_reserve(cb, b->n_ctx + n))
        return -1;
    const int use_long = rope_use_long(cf, (long)b->n_ctx + n);
    if (cu_set_rope_mode(cb, use_long))
        return -1;
    memcpy(c->ctx_ids + b->n_ctx, ids, (size_t)n * sizeof *ids);
    if (c->fast && n == 1 && logits) {
        if (cu_fast_step(cb, ids[0], use_long, logits))
            return -1;
    } else {
        for (int done = 0; done < n;) {
            const int k = n - done < c->chunk ? n - done : c->chunk;
            if (cu_chunk(cb, ids + done, k, b->n_ctx + done, use_long))
                return -1;
            if (logits && all && cu_logits(cb, 0, k, logits + (size_t)done * cf->vocab))
                return -1;
            if (logits && !all && done + k == n && cu_logits(cb, k - 1, 1, logits))
                return -1;
            done += k;
        }
        if (!logits)
            CU_TRY(b, cudaStreamSynchronize(c->stream));   /* report faults of this call here */
    }
    tm_end(cb, n, b->n_ctx, t_entry);
    b->n_ctx += n;
    return 0;
}

/* ---- opt-in: several streams in one forward (PHI3_CUDA_BATCH=1, the server) ----
 * Compiled, not yet run on a GPU. Every stream is a backend made by phi3_cuda_new_shared
 * from one owner (one copy of the weights); a step stacks their tokens: the products run
 * once over all rows (the weights read once), RoPE, the KV write and attention run per
 * stream on its own cache, position and LongRoPE mode. It is cu_chunk's default path with
 * per-stream segments (kept apart from cu_chunk so the verified path stays as it is). */

typedef struct cu_seg {
    cuda_backend *cb;                   /* the stream's backend: KV cache, context */
    int n, pos0, use_long, r;           /* tokens, first position, rope mode, first row */
} cu_seg;

static int cu_chunk_multi(cuda_backend *cb, const cu_seg *sg, int k, int rows)
{
    backend *b = &cb->b;
    cuda_ctx *c = &cb->c;
    const phi3_config *cf = &b->m->cfg;
    const int H = cf->hidden, nh = cf->n_heads, nkv = cf->n_kv_heads, hd = cf->head_dim;
    const int I = cf->intermediate, qdim = nh * hd, qkvdim = (nh + 2 * nkv) * hd;
    const int split = rows <= c->split_max;
    const int cols = split ? 2 * rows : rows;
    const int window = cf->sliding_window > 0 ? cf->sliding_window : 0;
    cudaStream_t s = c->stream;

    CU_TRY(b, kern_embed(s, c->embed, c->ids, rows, H, c->x));
    for (int l = 0; l < cf->n_layers; l++) {
        const cu_layer *L = &c->layers[l];
        CU_TRY(b, kern_rmsnorm(s, c->x, L->ln1, rows, H, cf->rms_eps, c->act,
                               split ? c->act + (size_t)rows * H : NULL));
        if (cu_linear(cb, L->qkv, &L->qqkv, c->act, cols, split, H, qkvdim, c->y, 0.0f))
            return -1;
        for (int i = 0; i < k; i++) {
            const cu_seg *g = &sg[i];
            const cuda_ctx *gc = &g->cb->c;
            const int flash = c->attn_mode == 2 || (c->attn_mode == 0 && g->n > 1);
            const float *y = c->y + (size_t)g->r * qkvdim;
            CU_TRY(b, kern_rope_qkv(s, y, split ? y + (size_t)rows * qkvdim : NULL, g->n, g->pos0, nh, nkv,
                                    hd, c->inv_freq[g->use_long], c->attn_factor,
                                    flash ? NULL : c->qf + (size_t)g->r * qdim,
                                    flash ? c->qb + (size_t)g->r * qdim : NULL, gc->kc[l], gc->vc[l]));
            if (flash)
                CU_TRY(b, kern_attn_prefill(s, c->qb + (size_t)g->r * qdim, gc->kc[l], gc->vc[l], g->n, g->pos0,
                                            nh, nkv, hd, window, c->att + (size_t)g->r * qdim));
            else
                CU_TRY(b, kern_attn_decode(s, c->qf + (size_t)g->r * qdim, gc->kc[l], gc->vc[l], g->n, g->pos0,
                                           nh, nkv, hd, window, c->work, c->work_floats, c->n_sm,
                                           c->att + (size_t)g->r * qdim));
        }
        CU_TRY(b, kern_split_bf16(s, c->att, c->act, split ? c->act + (size_t)rows * qdim : NULL,
                                  (size_t)rows * qdim));
        if (cu_linear(cb, L->o, &L->qo, c->act, cols, split, qdim, H, c->y, 0.0f))
            return -1;
        CU_TRY(b, kern_residual_add(s, c->x, c->y, split ? c->y + (size_t)rows * H : NULL, (size_t)rows * H));
        CU_TRY(b, kern_rmsnorm(s, c->x, L->ln2, rows, H, cf->rms_eps, c->act,
                               split ? c->act + (size_t)rows * H : NULL));
        if (cu_linear(cb, L->gate_up, &L->qgate_up, c->act, cols, split, H, 2 * I, c->y, 0.0f))
            return -1;
        CU_TRY(b, kern_swiglu(s, c->y, split ? c->y + (size_t)rows * 2 * I : NULL, rows, I, c->act,
                              split ? c->act + (size_t)rows * I : NULL));
        if (cu_linear(cb, L->down, &L->qdown, c->act, cols, split, I, H, c->y, 0.0f))
            return -1;
        CU_TRY(b, kern_residual_add(s, c->x, c->y, split ? c->y + (size_t)rows * H : NULL, (size_t)rows * H));
    }
    return 0;
}

/* One forward over k streams (bs[i] made by phi3_cuda_new_shared from the same owner, or
 * the owner itself), n[i] tokens each, logits as backend.h's forward gives them (all[i]:
 * every position). The rows must fit the first stream's buffers (its chunk); a step that
 * does not fit returns -1 having computed nothing, with the reason in bs[0]->err (the caller
 * then runs the streams one by one). */
extern "C" int phi3_cuda_forward_batch(backend **bs, const int32_t **ids, const int *n, float **logits,
                                       const int *all, int k)
{
    if (k <= 0)
        return 0;
    cuda_backend *cb = (cuda_backend *)bs[0];
    backend *b = &cb->b;
    cuda_ctx *c = &cb->c;
    const phi3_config *cf = &b->m->cfg;
    const int V = cf->vocab;
    b->err[0] = 0;
    cu_seg *sg = (cu_seg *)calloc((size_t)k, sizeof *sg);
    if (!sg)
        return cu_fail(b, "out of host memory");
    int rows = 0, ok = 1, one_row = 1;
    for (int i = 0; i < k && ok; i++) {
        cuda_backend *gi = (cuda_backend *)bs[i];
        ok = bs[i]->ops == b->ops && bs[i]->m == b->m && gi->c.layers == c->layers && n[i] > 0 &&
             (long)bs[i]->n_ctx + n[i] <= bs[i]->max_ctx;
        for (int t = 0; ok && t < n[i]; t++)
            ok = ids[i][t] >= 0 && ids[i][t] < V;
        sg[i] = (cu_seg){gi, n[i], bs[i]->n_ctx, rope_use_long(cf, (long)bs[i]->n_ctx + n[i]), rows};
        rows += n[i];
        one_row &= n[i] == 1 && (!logits[i] || !all[i]);
    }
    if (!ok || rows > c->chunk) {
        free(sg);
        return cu_fail(b, "batched forward: %s", ok ? "more rows than one chunk" : "streams that cannot be stacked");
    }
    /* each stream's cache and context ready, its own stream idle (a LongRoPE switch is
     * that stream's recompute, on its own) */
    for (int i = 0; i < k; i++) {
        cuda_backend *gi = sg[i].cb;
        if (cu_ids_reserve(gi, gi->b.n_ctx + n[i]) || cu_kv_reserve(gi, gi->b.n_ctx + n[i]) ||
            cu_set_rope_mode(gi, sg[i].use_long)) {
            snprintf(b->err, sizeof b->err, "%s", gi->b.err);
            free(sg);
            return -1;
        }
        if (gi != cb)
            CU_TRY(b, cudaStreamSynchronize(gi->c.stream));
    }
    int32_t *hid = (int32_t *)malloc((size_t)rows * sizeof *hid);
    if (!hid) {
        free(sg);
        return cu_fail(b, "out of host memory");
    }
    for (int i = 0; i < k; i++)
        memcpy(hid + sg[i].r, ids[i], (size_t)n[i] * sizeof *hid);
    int rc = 0;
    if (cudaMemcpyAsync(c->ids, hid, (size_t)rows * sizeof *hid, cudaMemcpyHostToDevice, c->stream) != cudaSuccess)
        rc = cu_fail(b, "cuda: ids upload failed (%s:%d)", __FILE__, __LINE__);
    if (!rc)
        rc = cu_chunk_multi(cb, sg, k, rows);
    if (!rc && one_row && rows <= CU_LOGIT_ROWS) {
        /* a decode step: every row is one stream's last: one LM head pass for all */
        if (!c->h_batch &&       /* CU_LOGIT_ROWS rows, made on the first batched step */
            cudaMallocHost((void **)&c->h_batch, (size_t)CU_LOGIT_ROWS * V * sizeof(float)) != cudaSuccess) {
            c->h_batch = NULL;
            rc = cu_fail(b, "cuda: cudaMallocHost(batch logits) failed");
        }
        if (!rc)
            rc = cu_logits(cb, 0, rows, c->h_batch);
        for (int i = 0; !rc && i < k; i++)
            if (logits[i])
                memcpy(logits[i], c->h_batch + (size_t)sg[i].r * V, (size_t)V * sizeof(float));
    } else {
        for (int i = 0; !rc && i < k; i++) {
            if (!logits[i])
                continue;
            rc = all[i] ? cu_logits(cb, sg[i].r, n[i], logits[i]) : cu_logits(cb, sg[i].r + n[i] - 1, 1, logits[i]);
        }
    }
    if (!rc && cudaStreamSynchronize(c->stream) != cudaSuccess)
        rc = cu_fail(b, "cuda: batched step failed (%s:%d)", __FILE__, __LINE__);
    free(hid);
    if (!rc)
        for (int i = 0; i < k; i++) {
            memcpy(sg[i].cb->c.ctx_ids + sg[i].pos0, ids[i], (size_t)n[i] * sizeof *ids[i]);
            sg[i].cb->b.n_ctx += n[i];
        }
    free(sg);
    return rc ? -1 : 0;
}

static int cu_truncate(backend *b, int n)
{
    cuda_backend *cb = (cuda_backend *)b;
    b->err[0] = 0;
    if (n < 0 || n > b->n_ctx)
        return cu_fail(b, "cannot truncate a context of %d to %d", b->n_ctx, n);
    tm_flush(cb);
    b->n_ctx = n;
    return cu_set_rope_mode(cb, rope_use_long(&b->m->cfg, n));
}
/* ---- sessions: rows in the CPU layout (backend.h) ---- */

/* Positions per host <-> device pass: rows of 2 kvdim floats staged in the y buffer. */
static int cu_kv_stage_rows(const cuda_backend *cb)
{
    const phi3_config *cf = &cb->b.m->cfg;
    size_t per = (size_t)2 * cf->n_kv_heads * cf->head_dim;
    size_t r = (size_t)cb->c.rows * (size_t)cb->c.y_cols / per;
    return r > (size_t)CU_CHUNK ? CU_CHUNK : (int)r;
}

static int cu_kv_load(backend *b, const int32_t *ids, const float *rows, int n, int rope_long)
{
    cuda_backend *cb = (cuda_backend *)b;
    cuda_ctx *c = &cb->c;
    const phi3_config *cf = &b->m->cfg;
    b->err[0] = 0;
    if (n < 0 || n > b->max_ctx)
        return cu_fail(b, "cannot load %d positions (limit %d)", n, b->max_ctx);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= cf->vocab)
            return cu_fail(b, "token id %d out of range [0, %d)", ids[i], cf->vocab);
    if (cu_ids_reserve(cb, n) || cu_kv_reserve(cb, n))
        return -1;
    b->n_ctx = 0;                       /* nothing valid until every row is in */
    const size_t kvdim = (size_t)cf->n_kv_heads * cf->head_dim;
    const size_t pos_floats = kv_pos_floats(b->m);
    const int step = cu_kv_stage_rows(cb);
    for (int p0 = 0; p0 < n; p0 += step) {
        const int k = n - p0 < step ? n - p0 : step;
        for (int l = 0; l < cf->n_layers; l++) {
            CU_TRY(b, cudaMemcpy2DAsync(c->y, 2 * kvdim * sizeof(float),
                                        rows + (size_t)p0 * pos_floats + (size_t)l * 2 * kvdim,
                                        pos_floats * sizeof(float), 2 * kvdim * sizeof(float),
                                        (size_t)k, cudaMemcpyHostToDevice, c->stream));
            CU_TRY(b, kern_kv_import(c->stream, c->y, p0, k, (int)kvdim, c->kc[l], c->vc[l]));
        }
    }
    CU_TRY(b, cudaStreamSynchronize(c->stream));
    memcpy(c->ctx_ids, ids, (size_t)n * sizeof *ids);
    b->n_ctx = n;
    b->rope_long = rope_long ? 1 : 0;
    return 0;
}

/* rows: the base of the store (position 0); positions [from, to) are written at
 * rows + p * pos_floats, as backend.h's row(p, l). */
static int cu_kv_save(backend *b, int from, int to, float *rows)
{
    cuda_backend *cb = (cuda_backend *)b;
    cuda_ctx *c = &cb->c;
    const phi3_config *cf = &b->m->cfg;
    b->err[0] = 0;
    if (from < 0 || to > b->n_ctx || from > to)
        return cu_fail(b, "cannot save positions [%d, %d) of a context of %d", from, to, b->n_ctx);
    const size_t kvdim = (size_t)cf->n_kv_heads * cf->head_dim;
    const size_t pos_floats = kv_pos_floats(b->m);
    const int step = cu_kv_stage_rows(cb);
    for (int p0 = from; p0 < to; p0 += step) {
        const int k = to - p0 < step ? to - p0 : step;
        for (int l = 0; l < cf->n_layers; l++) {
            CU_TRY(b, kern_kv_export(c->stream, c->kc[l], c->vc[l], p0, k, cf->n_kv_heads,
                                     cf->head_dim, c->inv_freq[b->rope_long], c->attn_factor, c->y));
            CU_TRY(b, cudaMemcpy2DAsync(rows + (size_t)p0 * pos_floats + (size_t)l * 2 * kvdim,
                                        pos_floats * sizeof(float), c->y, 2 * kvdim * sizeof(float),
                                        2 * kvdim * sizeof(float), (size_t)k,
                                        cudaMemcpyDeviceToHost, c->stream));
            /* the staging buffer is reused by the next layer */
            CU_TRY(b, cudaStreamSynchronize(c->stream));
        }
    }
    return 0;
}

/* ---- life cycle ---- */

static void cu_destroy(backend *b)
{
    cuda_backend *cb = (cuda_backend *)b;
    if (!cb)
        return;
    cuda_ctx *c = &cb->c;
    const int nl = b->m ? b->m->cfg.n_layers : 0;
    if (c->stream)
        cudaStreamSynchronize(c->stream);
    tm_free(cb);
    cu_graph_drop(c);
    if (c->h_step)
        cudaFreeHost(c->h_step);
    if (c->h_logits)
        cudaFreeHost(c->h_logits);
    cudaFree(c->d_step);
    if (c->h_batch)
        cudaFreeHost(c->h_batch);
    if (c->borrowed) {                                  /* not ours to free */
        c->layers = NULL;
        c->embed = c->lm_head = NULL;
        c->norm = NULL;
        c->qlm_head.w = NULL;
        c->wdq = NULL;
    }
    if (c->layers) {
        for (int l = 0; l < nl; l++) {
            cu_layer *L = &c->layers[l];
            cudaFree(L->ln1);
            cudaFree(L->ln2);
            cudaFree(L->qkv);
            cudaFree(L->o);
            cudaFree(L->gate_up);
            cudaFree(L->down);
            cudaFree((void *)L->qqkv.w);
            cudaFree((void *)L->qo.w);
            cudaFree((void *)L->qgate_up.w);
            cudaFree((void *)L->qdown.w);
        }
        free(c->layers);
    }
    if (c->lm_head != c->embed)
        cudaFree(c->lm_head);
    cudaFree((void *)c->qlm_head.w);
    cudaFree(c->xq);
    cudaFree(c->wdq);
    cudaFree(c->embed);
    cudaFree(c->norm);
    for (int l = 0; l < nl; l++) {
        if (c->kv_async) {                              /* stream-ordered memory */
            if (c->kc && c->kc[l])
                cudaFreeAsync(c->kc[l], c->stream);
            if (c->vc && c->vc[l])
                cudaFreeAsync(c->vc[l], c->stream);
            continue;
        }
        if (c->kc)
            cudaFree(c->kc[l]);
        if (c->vc)
            cudaFree(c->vc[l]);
    }
    if (c->kv_async && c->stream)
        cudaStreamSynchronize(c->stream);
    free(c->kc);
    free(c->vc);
    free(c->ctx_ids);
    cudaFree(c->inv_freq[0]);
    cudaFree(c->inv_freq[1]);
    cudaFree(c->x);
    cudaFree(c->act);
    cudaFree(c->y);
    cudaFree(c->qf);
    cudaFree(c->qb);
    cudaFree(c->att);
    cudaFree(c->work);
    cudaFree(c->ids);
    cudaFree(c->logits);
    cu_blas_free(cb);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    free(cb);
}

static const backend_ops cuda_ops = {
    "cuda", cu_forward, cu_truncate, cu_destroy, cu_kv_load, cu_kv_save,
};

static int env_int(const char *name, int dflt)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return dflt;
    char *end;
    long v = strtol(s, &end, 10);
    return *end || v < 0 || v > (1 << 20) ? dflt : (int)v;
}

static int imax(int a, int b) { return a > b ? a : b; }

/* Everything after the context struct exists: device, handles, weights, buffers. */
static int cu_init(cuda_backend *cb, const cuda_backend *from)
{
    backend *b = &cb->b;
    cuda_ctx *c = &cb->c;
    const phi3_config *cf = &b->m->cfg;
    const int H = cf->hidden, nh = cf->n_heads, nkv = cf->n_kv_heads, hd = cf->head_dim;
    const int I = cf->intermediate, V = cf->vocab;
    if (!kern_attn_head_dim_ok(hd))
        return cu_fail(b, "head_dim %d is not supported by the CUDA kernels (32, 64, 96, 128)", hd);
    if (nkv <= 0 || nh % nkv)
        return cu_fail(b, "%d attention heads are not a multiple of %d kv heads", nh, nkv);
    if (H % 8 || I % 8)
        return cu_fail(b, "hidden %d and intermediate %d must be multiples of 8", H, I);

    int dev = 0;
    CU_TRY(b, cudaGetDevice(&dev));
    CU_TRY(b, cudaDeviceGetAttribute(&c->n_sm, cudaDevAttrMultiProcessorCount, dev));
    CU_TRY(b, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    if (cu_blas_init(cb))
        return -1;
    c->split_max = env_int("PHI3_CUDA_SPLIT_MAX", CU_SPLIT_MAX_DEFAULT);
    if (c->split_max > CU_CHUNK / 2)
        c->split_max = CU_CHUNK / 2;
    const char *am = getenv("PHI3_CUDA_ATTN");     /* testing: force one attention kernel */
    c->attn_mode = am && !strcmp(am, "decode") ? 1 : am && !strcmp(am, "flash") ? 2 : 0;
    /* opt-in: kernels/fast.cuh (1), and programmatic dependent launch in its decode step (2) */
    const int fast_level = env_int("PHI3_CUDA_FAST", 0);
    /* the fast decode step reads bf16 weights: a quantized model keeps the default path */
    c->wdq_elems = cu_quant_max_elems(b->m);
    c->fast = (fast_level == 1 || fast_level == 2) && !c->wdq_elems;
    c->tm.level = env_int("PHI3_CUDA_TIMING", 0);
    if (c->tm.level) {
        CU_TRY(b, cudaEventCreate(&c->tm.e0));
        CU_TRY(b, cudaEventCreate(&c->tm.e1));
    }

    /* Buffers first (a clear message when even they do not fit), then weights. */
    c->chunk = b->max_ctx < CU_CHUNK ? b->max_ctx : CU_CHUNK;
    c->rows = imax(c->chunk, imax(2 * c->split_max, 2 * CU_LOGIT_ROWS));
    const int qdim = nh * hd, qkvdim = (nh + 2 * nkv) * hd;
    c->act_cols = imax(H, imax(qdim, I));
    c->y_cols = imax(qkvdim, imax(2 * I, H));
    c->work_floats = (size_t)nh * (hd + 2) *
                     (size_t)imax(CU_DECODE_SPLITS, c->attn_mode == 1 ? 4 * c->chunk : 0);
    size_t need_w = 0;
    if (!from) {
        /* bf16 on the device, or the blocks of a quantized weight (the embedding table is
         * dequantized), plus the dequantization buffer */
        const phi3_model *m = b->m;
        need_w += (size_t)m->embed.rows * m->embed.cols * 2 + c->wdq_elems * 2;
        if (m->lm_head.data != m->embed.data)
            need_w += cu_weight_bytes(&m->lm_head);
        for (int l = 0; l < cf->n_layers; l++) {
            const phi3_layer *L = &m->layers[l];
            need_w += cu_weight_bytes(&L->qkv) + cu_weight_bytes(&L->o) + cu_weight_bytes(&L->gate_up) +
                      cu_weight_bytes(&L->down) + (size_t)4 * 2 * H;
        }
    }
    const size_t need_buf = (size_t)c->chunk * H * 4 + (size_t)c->rows * c->act_cols * 2 +
                            (size_t)c->rows * c->y_cols * 4 + (size_t)c->chunk * qdim * (4 + 2 + 4) +
                            c->work_floats * 4 + (size_t)2 * CU_LOGIT_ROWS * V * 4;
    size_t fr = 0, tot = 0;
    CU_TRY(b, cudaMemGetInfo(&fr, &tot));
    if (need_w + need_buf > fr)
        return cu_fail(b, "out of device memory: the weights need %zu bytes and the work buffers "
                       "%zu, but only %zu of %zu bytes are free", need_w, need_buf, fr, tot);

    CU_MALLOC(b, c->x, (size_t)c->chunk * H * sizeof(float), "activations");
    CU_MALLOC(b, c->act, (size_t)c->rows * c->act_cols * sizeof(bf16), "activations");
    CU_MALLOC(b, c->y, (size_t)c->rows * c->y_cols * sizeof(float), "activations");
    CU_MALLOC(b, c->qf, (size_t)c->chunk * qdim * sizeof(float), "activations");
    CU_MALLOC(b, c->qb, (size_t)c->chunk * qdim * sizeof(kvt), "activations");
    CU_MALLOC(b, c->att, (size_t)c->chunk * qdim * sizeof(float), "activations");
    CU_MALLOC(b, c->work, c->work_floats * sizeof(float), "attention workspace");
    CU_MALLOC(b, c->ids, (size_t)c->chunk * sizeof(int32_t), "token ids");
    CU_MALLOC(b, c->logits, (size_t)2 * CU_LOGIT_ROWS * V * sizeof(float), "logits");
    if (c->wdq_elems) {
        if (from)
            c->wdq = from->c.wdq;                       /* one forward at a time: shared */
        else
            CU_MALLOC(b, c->wdq, c->wdq_elems * sizeof(bf16), "dequantization buffer");
        CU_MALLOC(b, c->xq, (size_t)imax(c->split_max, CU_LOGIT_ROWS) * c->act_cols * sizeof(float),
                  "activations");
    }
    if (c->fast) {
        c->nsplit = fk_decode_splits(c->n_sm, nh);
        if ((size_t)nh * c->nsplit * (hd + 2) > c->work_floats)
            c->nsplit = (int)(c->work_floats / ((size_t)nh * (hd + 2)));
        CU_MALLOC(b, c->d_step, 2 * sizeof(int32_t), "decode step");
        CU_TRY(b, cudaMallocHost((void **)&c->h_step, 2 * sizeof(int32_t)));
        CU_TRY(b, cudaMallocHost((void **)&c->h_logits, (size_t)V * sizeof(float)));
        CU_TRY(b, fk_gemv_prepare(imax(H, imax(qdim, I))));
        int pools = 0;
        if (cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, dev) != cudaSuccess)
            cudaGetLastError();
        c->kv_async = pools != 0;
        int major = 0;
        CU_TRY(b, cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
        c->pdl = fast_level == 2 && major >= 9;
    }

    /* RoPE tables as the CPU backend computes them (decode/rope.c). */
    float *inv = (float *)malloc((size_t)hd / 2 * sizeof(float));
    if (!inv)
        return cu_fail(b, "out of host memory");
    for (int lg = 0; lg < 2; lg++) {
        rope_inv_freq(cf, lg, inv);
        if (cu_malloc(b, (void **)&c->inv_freq[lg], (size_t)hd / 2 * sizeof(float), "rope tables",
                      __FILE__, __LINE__) ||
            cudaMemcpy(c->inv_freq[lg], inv, (size_t)hd / 2 * sizeof(float),
                       cudaMemcpyHostToDevice) != cudaSuccess) {
            free(inv);
            return b->err[0] ? -1 : cu_fail(b, "cuda: cudaMemcpy(rope tables) failed (%s:%d)",
                                            __FILE__, __LINE__);
        }
    }
    free(inv);
    c->attn_factor = (float)cf->attn_factor;

    c->kc = (kvt **)calloc((size_t)cf->n_layers, sizeof(kvt *));
    c->vc = (kvt **)calloc((size_t)cf->n_layers, sizeof(kvt *));
    if (!c->kc || !c->vc)
        return cu_fail(b, "out of host memory");

    if (from) {
        /* the other backend's device weights, read only (it outlives this one) */
        const cuda_ctx *f = &from->c;
        c->embed = f->embed;
        c->lm_head = f->lm_head;
        c->qlm_head = f->qlm_head;
        c->norm = f->norm;
        c->layers = f->layers;
        c->borrowed = 1;
    } else if (cu_upload_weights(cb))
        return -1;
    CU_TRY(b, cudaDeviceSynchronize());
    return 0;
}

/* The plug-in's entry points (decode/cuda_loader.c finds them with dlsym). */
extern "C" int phi3_cuda_available(void)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n > 0;
}

/* A backend for m: its own weights (from NULL) or from's (see phi3_cuda_new_shared). */
static backend *cu_new(const struct phi3_model *m, const cuda_backend *from, int max_ctx, char *err,
                       size_t errlen)
{
    cuda_backend *cb = (cuda_backend *)calloc(1, sizeof *cb);
    if (!cb) {
        snprintf(err, errlen, "out of host memory");
        return NULL;
    }
    const phi3_config *cf = &m->cfg;
    cb->b.ops = &cuda_ops;
    cb->b.m = m;
    cb->b.max_ctx = max_ctx <= 0 || max_ctx > cf->max_pos ? cf->max_pos : max_ctx;
    cb->b.n_ctx = 0;
    cb->b.rope_long = 0;
    if (cu_init(cb, from) || cu_kv_reserve(cb, cb->b.max_ctx < 4096 ? cb->b.max_ctx : 4096)) {
        snprintf(err, errlen, "%s", cb->b.err);
        cu_destroy(&cb->b);
        return NULL;
    }
    return &cb->b;
}

extern "C" backend *phi3_cuda_new(const struct phi3_model *m, int max_ctx, char *err,
                                  size_t errlen)
{
    int ndev = 0;
    cudaError_t e = cudaGetDeviceCount(&ndev);
    if (e != cudaSuccess || ndev <= 0) {
        snprintf(err, errlen, "no CUDA device available (%s)",
                 e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount found none");
        return NULL;
    }
    return cu_new(m, NULL, max_ctx, err, errlen);
}

/* A backend that reads the device weights of `base` (another phi3_cuda_new backend, which
 * must outlive it) and has its own buffers and KV cache: N streams hold one copy of the
 * weights. Opt-in with the batched forward (PHI3_CUDA_BATCH=1); not yet run on a GPU. */
extern "C" backend *phi3_cuda_new_shared(backend *base, int max_ctx, char *err, size_t errlen)
{
    return cu_new(base->m, (const cuda_backend *)base, max_ctx, err, errlen);
}
