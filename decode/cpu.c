/* cpu.c: the CPU reference backend: float32 forward pass of Phi-3 from BF16/F16/F32
 * weights read in place from the mmapped shards, with a position-major KV cache
 * (backend.h) and the LongRoPE short->long switch.
 *
 * Determinism: every output element (a matmul row of one token, one attention head of
 * one token) is computed by exactly one thread with one fixed operation order (the
 * canonical dot order of decode/gemm.h; attention over key tiles aligned to absolute
 * positions, see att_tiles), so the result for a position never depends on the thread
 * count, on how the tokens were split into forward() calls (given the same RoPE mode),
 * or on the instruction set (PHI3_NO_AVX=1 gives the same bits). */
#include "decode/backend.h"
#include "decode/cpu.h"
#include "decode/gemm.h"
#include "decode/simd.h"
#include "decode/pool.h"
#include "decode/qdot.h"
#include "decode/qlimb.h"
#include "decode/rope.h"
#include "embed/model.h"
#include "embed/quant.h"
#include "shared/util.h"
#include <immintrin.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 256               /* tokens per internal step of a long forward (weights are
                                   read from memory once per step) */

/* a slot of the transposed key tiles (att_tiles, KT_SLOTS) */
typedef struct kt_tag {
    uint64_t gen;               /* the attention pass (cpu.att_gen) that filled it; 0 never */
    int kh, kb, nk;             /* kv head, first position, keys */
} kt_tag;

typedef struct cpu {
    backend b;                  /* first: a backend* is a cpu* */
    pool *pool;
    kv_store kv;
    int own_kv;
    kv_grow_fn grow;
    void *grow_ctx;
    int kvdim, qkvdim;          /* n_kv_heads * head_dim; (nh + 2 nkv) * head_dim */
    size_t stride;              /* elements per position in kv (kv_pos_floats) */
    size_t es;                  /* bytes per element: 4 (f32) or 2 (f16) */
    float *inv_freq[2];         /* [hd/2] short (or plain), long */
    float *x, *xb, *qkv, *att, *hb, *cs;   /* scratch for CHUNK tokens */
    int ldx, lda, ldh;          /* row strides of xb, att, hb: see pad_ld */
    int32_t *ids;               /* token ids of the context [kv.capacity] (re-prefill) */
    int ids_cap;
    float **scores;             /* per thread [att_scratch_floats()] */
    float **kt_buf;             /* per thread: kt_cap[t] transposed key tiles (att_tiles) */
    kt_tag **kt_tags;           /* per thread [kt_cap[t]]: which key tile each slot holds */
    int *kt_cap;
    uint64_t att_gen;           /* attention passes so far (a slot of an earlier one is stale) */
    float **gscratch;           /* per thread [gemm_scratch_floats()] */
    float **dq;                 /* per thread [DQ_ROWS x dq_k] (quantized models), or NULL */
    int dq_k;
    float *xq;                  /* a product's activations packed for gemm_rows_xq [xq_cap] */
    size_t xq_cap;
    uint8_t *limbx;             /* qlimb (opt-in): 3 tokens' prepared activations, or NULL */
    size_t limbx_stride;
    int shared_pool;            /* pool belongs to another backend (backend_cpu_share_pool) */
    cpu_hidden_fn hook;
    void *hook_ctx;
} cpu;

/* The row stride of a matmul's activations: n floats plus 16 (one cache line). Rows a
 * multiple of 4 KB apart (Phi-3-mini's 3072 and 16384 floats) fall in the same L1 sets;
 * the GEMM tile reads six of them at once beside its 32 KB weight panel, more than the
 * sets' ways hold (tests/bench/pgemm_bench.c with and without PAD: 4-8%). Always padded,
 * so that every model in the tests runs the strided code. */
static int pad_ld(int n) { return n + 16; }

static int berr(cpu *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->b.err, sizeof c->b.err, fmt, ap);
    va_end(ap);
    return -1;
}

size_t kv_pos_floats(const struct phi3_model *m)
{
    return (size_t)m->cfg.n_layers * 2 * m->cfg.n_kv_heads * m->cfg.head_dim;
}

size_t kv_type_size(kv_type t) { return t == KV_F16 ? 2 : 4; }
const char *kv_type_name(kv_type t) { return t == KV_F16 ? "f16" : "f32"; }

/* ---- matmul: out[t * ldo + r] = W[row0 + r] . x[t * ldx], r < nrows, t < n ----
 * Every product follows the canonical dot order of decode/gemm.h (8 fmaf lanes along k,
 * a fixed reduction tree, then the tail in order), whether it is computed for one token
 * or inside the blocked many-token kernel, with AVX2, AVX-512 or scalar code; the pool
 * shares blocks of GEMM_MB rows. So a token's result is the same bits whatever the frame
 * split, the thread count or PHI3_NO_AVX. */

typedef struct mm_job {
    cpu *c;
    const gemm_ops *op;
    st_dtype quant;             /* the block type of quantized weights, else ST_NDTYPE */
    const uint8_t *w;
    size_t row_bytes;
    int K, nrows;
    const float *x;
    int ldx, n;
    float *out;
    int ldo;
    const uint8_t *xp;          /* qlimb: the n tokens' prepared activations, xp_stride apart */
    size_t xp_stride;
    const float *xq;            /* x packed by gemm_pack_x, or NULL */
    const gemm_ops *dqop;       /* quantized, 4..12 tokens: the float32 kernels for dequantized rows, or NULL */
} mm_job;

/* Quantized weights (GGUF blocks, decode/qdot.h) for one to three tokens: QDOT_ROWS rows
 * per kernel call (the AVX-512 kernels pair rows in zmm halves); more tokens go through
 * gemm_rows with panels dequantized by qdot_gemm_ops. Same canonical order, same bits. */
static void mm_rows_quant(const mm_job *j, st_dtype d, int r0, int r1)
{
    float o[QDOT_ROWS];
    for (int t = 0; t < j->n; t++) {
        const float *xt = j->x + (size_t)t * j->ldx;
        float *ot = j->out + (size_t)t * j->ldo;
        for (int r = r0; r < r1; r += QDOT_ROWS) {
            int nr = r1 - r < QDOT_ROWS ? r1 - r : QDOT_ROWS;
            if (j->xp)
                qlimb_rows(d, j->w + (size_t)r * j->row_bytes, j->row_bytes, nr, j->xp + (size_t)t * j->xp_stride,
                           j->K, o);
            else
                qdot_rows(d, j->w + (size_t)r * j->row_bytes, j->row_bytes, nr, xt, j->K, o);
            memcpy(ot + r, o, (size_t)nr * sizeof *o);
        }
    }
}

/* Quantized weights for 4..12 tokens (a server step of several decode streams) on
 * AVX-512: DQ_ROWS rows at a time dequantized exactly to float32 (the blocked path's panel
 * conversion), then the few-token register tiles on them, once for all tokens. The
 * blocked path (float32 panels, partial sums through memory, 6-token tiles: 8 tokens =
 * 6 + 2) made an 8-stream step of a quantized model slower than of its bf16 source. Same
 * floats, same canonical order: same bits. */
enum { DQ_ROWS = 24 };          /* whole 6- and 8-row tiles */
static void mm_rows_dq(const mm_job *j, int r0, int r1, int tid)
{
    float *buf = j->c->dq[tid];
    for (int r = r0; r < r1; r += DQ_ROWS) {
        int nr = r1 - r < DQ_ROWS ? r1 - r : DQ_ROWS;
        for (int i = 0; i < nr; i++) j->op->cvt(j->w + (size_t)(r + i) * j->row_bytes, 0, j->K, buf + (size_t)i * j->K);
        gemm_rows_xq(j->dqop, (const uint8_t *)buf, (size_t)j->K * sizeof(float), j->K, 0, nr, j->x, (size_t)j->ldx,
                     j->n, j->out + r, (size_t)j->ldo, j->c->gscratch[tid], j->xq);
    }
}

static void mm_rows(void *ctx, int begin, int end, int tid)
{
    const mm_job *j = ctx;
    int r1 = end * GEMM_MB < j->nrows ? end * GEMM_MB : j->nrows;
    if (j->dqop) {
        mm_rows_dq(j, begin * GEMM_MB, r1, tid);
        return;
    }
    if (j->quant != ST_NDTYPE && j->n < 4) {
        mm_rows_quant(j, j->quant, begin * GEMM_MB, r1);
        return;
    }
    gemm_rows_xq(j->op, j->w, j->row_bytes, j->K, begin * GEMM_MB, r1, j->x, (size_t)j->ldx, j->n, j->out,
                 (size_t)j->ldo, j->c->gscratch[tid], j->xq);
}

static void matmul(cpu *c, const phi3_weight *w, int row0, int nrows, const float *x, int ldx, int n,
                   float *out, int ldo)
{
    size_t rb = quant_row_bytes(w->dtype, w->cols);
    int q = quant_is_block(w->dtype);
    mm_job j = {c, q ? qdot_gemm_ops(w->dtype) : gemm_ops_for(w->dtype), q ? w->dtype : ST_NDTYPE,
                (const uint8_t *)w->data + (size_t)row0 * rb, rb, (int)w->cols, nrows, x, ldx, n, out, ldo,
                NULL, 0, NULL, NULL};
    if (q && n >= 4 && n <= 12 && gemm_vec_level() == 2 && w->cols <= c->dq_k) {
        if (!c->dq) {
            c->dq = xcalloc((size_t)pool_threads(c->pool), sizeof *c->dq);
            for (int t = 0; t < pool_threads(c->pool); t++)
                c->dq[t] = xmalloc_aligned((size_t)DQ_ROWS * (size_t)c->dq_k * sizeof(float));
        }
        j.dqop = gemm_ops_for(ST_F32);
    }
    /* 7..12 tokens (a server step) on AVX-512: x packed once here for every thread's calls */
    const gemm_ops *xop = j.dqop ? j.dqop : q ? NULL : j.op;
    size_t nq = xop ? gemm_xq_floats(xop, n, (int)w->cols) : 0;
    if (nq && nq <= c->xq_cap) {
        if (!c->xq) c->xq = xmalloc_aligned(c->xq_cap * sizeof(float));
        gemm_pack_x(xop, x, (size_t)ldx, n, (int)w->cols, c->xq);
        j.xq = c->xq;
    }
    /* opt-in (qlimb.h): decode products of K-quant weights from activations prepared once here */
    if (q && n < 4 && c->limbx && qlimb_supported(w->dtype) && qlimb_xbytes((int)w->cols) <= c->limbx_stride) {
        for (int t = 0; t < n; t++) qlimb_prep(w->dtype, x + (size_t)t * ldx, (int)w->cols, c->limbx + (size_t)t * c->limbx_stride);
        j.xp = c->limbx;
        j.xp_stride = c->limbx_stride;
    }
    pool_run(c->pool, mm_rows, &j, (nrows + GEMM_MB - 1) / GEMM_MB);
}

/* ---- small ops (single-threaded, fixed order) ---- */

/* out[i] = w[i] * (x[i] * inv), bf16 weights, sixteen at a time (elementwise: same bits) */
__attribute__((target("avx2,fma,f16c,avx512f"))) static void rms_apply_bf16_z(float *out, const float *x,
                                                                             const uint16_t *h, int n, float inv)
{
    const __m512 iv = _mm512_set1_ps(inv);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 wv = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(h + i))), 16));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(wv, _mm512_mul_ps(_mm512_loadu_ps(x + i), iv)));
    }
    for (; i < n; i++) out[i] = bf16_to_f32(h[i]) * (x[i] * inv);
}

/* transformers: x * rsqrt(mean(x^2) + eps), then weight * that */
static void rms_apply(float *out, const float *x, const phi3_weight *w, int n, float inv)
{
    const uint16_t *h = w->data;
    if (w->dtype == ST_BF16 && gemm_vec_level() == 2) {
        rms_apply_bf16_z(out, x, h, n, inv);
        return;
    }
    for (int i = 0; i < n; i++) {
        float wi = w->dtype == ST_BF16 ? bf16_to_f32(h[i]) : w->dtype == ST_F16 ? f16_to_f32(h[i])
                                                                               : ((const float *)w->data)[i];
        out[i] = wi * (x[i] * inv);
    }
}

static void rmsnorm(float *out, const float *x, const phi3_weight *w, int n, float eps)
{
    float ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    rms_apply(out, x, w, n, 1.0f / sqrtf(ss / (float)n + eps));
}

/* rmsnorm of 8 rows: their sums of squares as 8 chains side by side (each row's adds in
 * the same order as rmsnorm's one chain, so the same bits, without waiting on one add
 * after another) */
static void rmsnorm8(float *const out[8], const float *const x[8], const phi3_weight *w, int n, float eps)
{
    float ss[8] = {0};
    for (int i = 0; i < n; i++)
        for (int r = 0; r < 8; r++) ss[r] += x[r][i] * x[r][i];
    for (int r = 0; r < 8; r++) rms_apply(out[r], x[r], w, n, 1.0f / sqrtf(ss[r] / (float)n + eps));
}

/* the bytes of row(pos, layer) of backend.h */
static uint8_t *kv_row(cpu *c, int pos, int layer)
{
    return (uint8_t *)c->kv.base + ((size_t)pos * c->stride + (size_t)layer * 2 * c->kvdim) * c->es;
}

/* ---- attention ----
 * Blocked: an item is one head and a tile of up to ATT_TQ queries of the frame; keys and
 * values come in tiles of ATT_BK positions ALIGNED to multiples of ATT_BK (absolute
 * positions), the query tile x key tile scores are one small GEMM (each score a
 * canonical-order dot of q and k, times 1/sqrt(hd)), and each query keeps an online
 * softmax (running max m, sum l, output o) over the key tiles in ascending order:
 *   per tile with keys in the query's window [s, p]: mt = max of their scores;
 *   first tile: m = mt; later, if mt > m: a = exp(m - mt), l *= a, o[i] *= a, m = mt;
 *   then for each key in order: e = exp(score - m), l += e, o[i] = fmaf(e, v[i], o[i]);
 *   (exp: gemm_exp, one operation sequence in the scalar and vector forms);
 *   finally o[i] / l.
 * Which keys form a tile depends only on absolute positions, never on how many queries
 * share the item, so a query's result is the same bits in a one-token step and in any
 * frame split (and in the scalar and AVX paths: the same fmaf per lane). */

#define ATT_TQ 64
#define ATT_BK 64

/* Transposed key tiles kept per thread within one attention pass (one layer of one
 * frame): the items a thread takes in a row are mostly the same head's next query tiles,
 * which see the same key tiles again. A thread's slots (allocated when a pass first needs
 * them: as many as the context's tiles, at most KT_SLOTS, 512: a 32768-token context
 * whole, 12 MiB at head_dim 96) hold tile index mod their count; a pass of one query
 * tile per head (a server stream's chunk, a short frame) reuses nothing and takes one. */
#define KT_SLOTS 512

/* per thread: the scores [ATT_TQ][ATT_BK], the outputs [ATT_TQ][hd] */
static size_t att_scratch_floats(int hd) { return (size_t)ATT_TQ * ATT_BK + (size_t)ATT_TQ * hd; }

/* o[i] = o[i] * a (a != 1 only at a new maximum) */
/* s[k] *= scale for k < n, and the largest s[k] (NaN ignored, as the scalar loop's
 * comparison ignores it): products are elementwise and the maximum exact, so the bits are
 * those of the scalar loop (up to the sign of a zero maximum, which no exp(s - m) sees). */
__attribute__((target("avx2,fma,f16c,avx512f"))) static float scale_max_z(float *s, int n, float scale)
{
    __m512 vs = _mm512_set1_ps(scale), mv = _mm512_set1_ps(-INFINITY);
    int k = 0;
    for (; k + 16 <= n; k += 16) {
        __m512 v = _mm512_mul_ps(_mm512_loadu_ps(s + k), vs);
        _mm512_storeu_ps(s + k, v);
        mv = _mm512_max_ps(v, mv);                 /* NaN in v: mv */
    }
    if (k < n) {
        __mmask16 m = (__mmask16)((1u << (n - k)) - 1);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + k), vs);
        _mm512_mask_storeu_ps(s + k, m, v);
        mv = _mm512_mask_max_ps(mv, m, v, mv);
    }
    return _mm512_reduce_max_ps(mv);
}

static void vscale(float *o, float a, int n)
{
    for (int i = 0; i < n; i++) o[i] *= a;
}

/* o[i] = fmaf(e[k], v_k[i], o[i]) for keys k < nk in order, v_k = v + k * stride elements */
#define AXPY_TILE(NAME, ATTR, T, LOADV)                                                \
    ATTR static void NAME(float *o, const float *e, const void *vv, size_t stride, int nk, int n) \
    {                                                                                  \
        const T *v = vv;                                                               \
        int i = 0;                                                                     \
        AXPY_VEC_##T                                                                   \
        for (; i < n; i++) {                                                           \
            float acc = o[i];                                                          \
            for (int k = 0; k < nk; k++) acc = fmaf(e[k], LOADV(v + k * stride + i), acc); \
            o[i] = acc;                                                                \
        }                                                                              \
    }
#define LDV_F32(p) (*(p))
#define LDV_F16(p) f16_to_f32(*(p))
#define AXPY_VEC_float
#define AXPY_VEC_uint16_t
AXPY_TILE(axpy_f32_c, , float, LDV_F32)
AXPY_TILE(axpy_f16_c, , uint16_t, LDV_F16)
#undef AXPY_VEC_float
#undef AXPY_VEC_uint16_t
/* AVX2: 32 output lanes in registers across the key tile, then 8, then the scalar tail;
 * L8(p): 8 values of V at p as float32 */
#define AXPY_VEC(L8)                                                                   \
    for (; i + 32 <= n; i += 32) {                                                     \
        __m256 a0 = _mm256_loadu_ps(o + i), a1 = _mm256_loadu_ps(o + i + 8);           \
        __m256 a2 = _mm256_loadu_ps(o + i + 16), a3 = _mm256_loadu_ps(o + i + 24);     \
        for (int k = 0; k < nk; k++) {                                                 \
            __m256 ek = _mm256_set1_ps(e[k]);                                          \
            __typeof__(v) vk = v + k * stride + i;                                     \
            a0 = _mm256_fmadd_ps(ek, L8(vk), a0);                                      \
            a1 = _mm256_fmadd_ps(ek, L8(vk + 8), a1);                                  \
            a2 = _mm256_fmadd_ps(ek, L8(vk + 16), a2);                                 \
            a3 = _mm256_fmadd_ps(ek, L8(vk + 24), a3);                                 \
        }                                                                              \
        _mm256_storeu_ps(o + i, a0), _mm256_storeu_ps(o + i + 8, a1);                  \
        _mm256_storeu_ps(o + i + 16, a2), _mm256_storeu_ps(o + i + 24, a3);            \
    }                                                                                  \
    for (; i + 8 <= n; i += 8) {                                                       \
        __m256 a0 = _mm256_loadu_ps(o + i);                                            \
        for (int k = 0; k < nk; k++) a0 = _mm256_fmadd_ps(_mm256_set1_ps(e[k]), L8(v + k * stride + i), a0); \
        _mm256_storeu_ps(o + i, a0);                                                   \
    }
#define H8(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define AXPY_VEC_float AXPY_VEC(_mm256_loadu_ps)
#define AXPY_VEC_uint16_t AXPY_VEC(H8)
AXPY_TILE(axpy_f32_avx, __attribute__((target("avx2,fma,f16c"))), float, LDV_F32)
AXPY_TILE(axpy_f16_avx, __attribute__((target("avx2,fma,f16c"))), uint16_t, LDV_F16)

/* One query (AVX-512): the same per-lane fmaf sequence as axpy_* with up to 96 output
 * lanes in six zmm registers across the key tile (head_dim 96 or 64 in one pass over the
 * keys, six or four independent FMA chains per key), then the scalar tail. */
#define AXPY1(NAME, T, LOAD16, LOADV)                                                  \
    __attribute__((target("avx2,fma,f16c,avx512f"))) static inline __attribute__((always_inline)) void \
    NAME##_pass(float *o, const float *e, const T *v, size_t stride, int nk, const int Z) \
    {                                                                                  \
        __m512 a[6];                                                                   \
        _Pragma("GCC unroll 6") for (int z = 0; z < Z; z++) a[z] = _mm512_loadu_ps(o + 16 * z); \
        for (int k = 0; k < nk; k++) {                                                 \
            __m512 ek = _mm512_set1_ps(e[k]);                                          \
            const T *vk = v + k * stride;                                              \
            _Pragma("GCC unroll 6") for (int z = 0; z < Z; z++) a[z] = _mm512_fmadd_ps(ek, LOAD16(vk + 16 * z), a[z]); \
        }                                                                              \
        _Pragma("GCC unroll 6") for (int z = 0; z < Z; z++) _mm512_storeu_ps(o + 16 * z, a[z]); \
    }                                                                                  \
    __attribute__((target("avx2,fma,f16c,avx512f"))) static void NAME(float *o, const float *e, const void *vv, \
                                                                    size_t stride, int nk, int n) \
    {                                                                                  \
        const T *v = vv;                                                               \
        int i = 0;                                                                     \
        while (n - i >= 16) {                                                          \
            int z = (n - i) / 16 < 6 ? (n - i) / 16 : 6;                               \
            switch (z) {                                                               \
            case 6: NAME##_pass(o + i, e, v + i, stride, nk, 6); break;                \
            case 5: NAME##_pass(o + i, e, v + i, stride, nk, 5); break;                \
            case 4: NAME##_pass(o + i, e, v + i, stride, nk, 4); break;                \
            case 3: NAME##_pass(o + i, e, v + i, stride, nk, 3); break;                \
            case 2: NAME##_pass(o + i, e, v + i, stride, nk, 2); break;                \
            default: NAME##_pass(o + i, e, v + i, stride, nk, 1); break;               \
            }                                                                          \
            i += 16 * z;                                                               \
        }                                                                              \
        for (; i < n; i++) {                                                           \
            float acc = o[i];                                                          \
            for (int k = 0; k < nk; k++) acc = fmaf(e[k], LOADV(v + k * stride + i), acc); \
            o[i] = acc;                                                                \
        }                                                                              \
    }

/* Four queries with the same keys at once (AVX-512): o_q[i] = fmaf(e_q[k], v_k[i], o_q[i])
 * for q < 4 (o_q = o + q * hd, e_q = e + q * ATT_BK), keys k < nk in order: per lane the
 * same fmaf sequence as axpy_*, with each V row loaded once for the four. Up to 96 lanes
 * per pass over the keys (Z = 6 zmm per query: 24 accumulators, 24 independent FMA chains
 * per key), so head_dim 96 or 64 is one pass. */
#define AXPY4(NAME, T, LOAD16, LOADV)                                                  \
    __attribute__((target("avx2,fma,f16c,avx512f"))) static inline __attribute__((always_inline)) void \
    NAME##_pass(float *o, const float *e, const T *v, size_t stride, int nk, int hd, const int Z) \
    {                                                                                  \
        __m512 a[4][6];                                                                \
        _Pragma("GCC unroll 4") for (int q = 0; q < 4; q++)                             \
            _Pragma("GCC unroll 6") for (int z = 0; z < Z; z++) a[q][z] = _mm512_loadu_ps(o + q * hd + 16 * z); \
        for (int k = 0; k < nk; k++) {                                                 \
            const T *vk = v + k * stride;                                              \
            __m512 vz[6];                                                              \
            _Pragma("GCC unroll 6") for (int z = 0; z < Z; z++) vz[z] = LOAD16(vk + 16 * z); \
            _Pragma("GCC unroll 4") for (int q = 0; q < 4; q++) {                       \
                __m512 ek = _mm512_set1_ps(e[q * ATT_BK + k]);                         \
                _Pragma("GCC unroll 6") for (int z = 0; z < Z; z++) a[q][z] = _mm512_fmadd_ps(ek, vz[z], a[q][z]); \
            }                                                                          \
        }                                                                              \
        _Pragma("GCC unroll 4") for (int q = 0; q < 4; q++)                             \
            _Pragma("GCC unroll 6") for (int z = 0; z < Z; z++) _mm512_storeu_ps(o + q * hd + 16 * z, a[q][z]); \
    }                                                                                  \
    __attribute__((target("avx2,fma,f16c,avx512f"))) static void NAME(float *o, const float *e, const void *vv, \
                                                                    size_t stride, int nk, int hd) \
    {                                                                                  \
        const T *v = vv;                                                               \
        int i = 0;                                                                     \
        while (hd - i >= 16) {                                                         \
            int z = (hd - i) / 16 < 6 ? (hd - i) / 16 : 6;                             \
            switch (z) {                                                               \
            case 6: NAME##_pass(o + i, e, v + i, stride, nk, hd, 6); break;            \
            case 5: NAME##_pass(o + i, e, v + i, stride, nk, hd, 5); break;            \
            case 4: NAME##_pass(o + i, e, v + i, stride, nk, hd, 4); break;            \
            case 3: NAME##_pass(o + i, e, v + i, stride, nk, hd, 3); break;            \
            case 2: NAME##_pass(o + i, e, v + i, stride, nk, hd, 2); break;            \
            default: NAME##_pass(o + i, e, v + i, stride, nk, hd, 1); break;           \
            }                                                                          \
            i += 16 * z;                                                               \
        }                                                                              \
        for (int q = 0; q < 4; q++)                                                    \
            for (int j = i; j < hd; j++) {                                             \
                float acc = o[q * hd + j];                                             \
                for (int k = 0; k < nk; k++) acc = fmaf(e[q * ATT_BK + k], LOADV(v + k * stride + j), acc); \
                o[q * hd + j] = acc;                                                   \
            }                                                                          \
    }
#define L16_F32(p) _mm512_loadu_ps(p)
#define L16_F16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
AXPY4(axpy4_f32_z, float, L16_F32, LDV_F32)
AXPY4(axpy4_f16_z, uint16_t, L16_F16, LDV_F16)
AXPY1(axpy1_f32_z, float, L16_F32, LDV_F32)
AXPY1(axpy1_f16_z, uint16_t, L16_F16, LDV_F16)

/* ---- scores with the keys along the lanes (AVX-512, a tile of several queries) ----
 * kt: the tile's keys transposed, kt[d * ATT_BK + key] (float32; keys past the tile's
 * last are zeros). A score is the canonical-order dot of q and k (decode/gemm.h): for
 * each lane j = d % 8 an FMA chain over d = j, j + 8, ... in increasing d, then
 * ((c0 + c1) + (c2 + c3)) + ((c4 + c5) + (c6 + c7)) and the tail dims in order. Here each
 * chain is a zmm of sixteen keys, so that tree is vertical adds where gemm_rows (keys as
 * rows) needs transposes of every output: the same bits, fewer operations. */
#define ZF __attribute__((target("avx2,fma,f16c,avx512f")))

/* rows [0, nk) of the keys (elements of T, rows rb bytes apart), dims [0, hd), into kt:
 * 8 x 8 blocks (L8: 8 elements as float32) through transpose8x8_ps */
#define KT_TRANSPOSE(NAME, T, L8, LOADV)                                               \
    ZF static void NAME(float *kt, const uint8_t *k, size_t rb, int nk, int hd)       \
    {                                                                                  \
        int hd8 = hd & ~7;                                                             \
        for (int k0 = 0; k0 < ATT_BK; k0 += 8) {                                       \
            for (int d0 = 0; d0 < hd8; d0 += 8) {                                      \
                __m256 r[8];                                                           \
                for (int i = 0; i < 8; i++)                                            \
                    r[i] = k0 + i < nk ? L8((const T *)(k + (size_t)(k0 + i) * rb) + d0) : _mm256_setzero_ps(); \
                transpose8x8_ps(r);                                                    \
                for (int i = 0; i < 8; i++) _mm256_storeu_ps(kt + (size_t)(d0 + i) * ATT_BK + k0, r[i]); \
            }                                                                          \
            for (int d = hd8; d < hd; d++)                                             \
                for (int i = 0; i < 8; i++)                                            \
                    kt[(size_t)d * ATT_BK + k0 + i] =                                  \
                        k0 + i < nk ? LOADV(((const T *)(k + (size_t)(k0 + i) * rb)) + d) : 0.0f; \
        }                                                                              \
    }
KT_TRANSPOSE(kt_f32_z, float, _mm256_loadu_ps, LDV_F32)
KT_TRANSPOSE(kt_f16_z, uint16_t, H8, LDV_F16)

/* one query x G groups of sixteen keys (8 G accumulators: one per lane j and group) */
ZF static inline __attribute__((always_inline)) void scores_kt_q(const float *kt, const float *q, int hd,
                                                                 float *out, const int G)
{
    __m512 c[3][8];
#pragma GCC unroll 3
    for (int g = 0; g < G; g++)
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) c[g][j] = _mm512_setzero_ps();
    int hd8 = hd & ~7;
    for (int d0 = 0; d0 < hd8; d0 += 8) {
        const float *kd = kt + (size_t)d0 * ATT_BK;
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            __m512 qv = _mm512_set1_ps(q[d0 + j]);
#pragma GCC unroll 3
            for (int g = 0; g < G; g++)
                c[g][j] = _mm512_fmadd_ps(_mm512_loadu_ps(kd + j * ATT_BK + 16 * g), qv, c[g][j]);
        }
    }
#pragma GCC unroll 3
    for (int g = 0; g < G; g++) {
        __m512 r = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(c[g][0], c[g][1]), _mm512_add_ps(c[g][2], c[g][3])),
                                 _mm512_add_ps(_mm512_add_ps(c[g][4], c[g][5]), _mm512_add_ps(c[g][6], c[g][7])));
        for (int d = hd8; d < hd; d++)
            r = _mm512_fmadd_ps(_mm512_loadu_ps(kt + (size_t)d * ATT_BK + 16 * g), _mm512_set1_ps(q[d]), r);
        _mm512_storeu_ps(out + 16 * g, r);
    }
}

/* sc[i * ATT_BK + key] for queries i < nq (q_i = q + i * ldq) and the nk keys of kt (the
 * scores of keys nk .. up to the next sixteen are written too, and never read) */
ZF static void scores_kt(const float *kt, int nk, const float *q, size_t ldq, int nq, int hd, float *sc)
{
    int ng = (nk + 15) / 16;
    for (int i = 0; i < nq; i++) {
        const float *qi = q + (size_t)i * ldq;
        float *o = sc + (size_t)i * ATT_BK;
        int g = 0;
        for (; ng - g >= 3; g += 3) scores_kt_q(kt + 16 * g, qi, hd, o + 16 * g, 3);
        if (ng - g == 2) scores_kt_q(kt + 16 * g, qi, hd, o + 16 * g, 2);
        else if (ng - g == 1) scores_kt_q(kt + 16 * g, qi, hd, o + 16 * g, 1);
    }
}

typedef struct att_job {
    cpu *c;
    int layer, pos0, n;
    uint64_t gen;               /* this pass's number (kt_tag) */
    int per;                    /* query tiles per item (0: 1) */
} att_job;

/* What the query tiles of one att_tiles call share (one thread's view). */
typedef void axpy_fn(float *, const float *, const void *, size_t, int, int);
typedef struct att_ctx {
    const att_job *j;
    cpu *c;
    int hd, group, win, zmm, f16, cap;
    float scale;
    float *sc, *obuf, *kts;     /* scores [ATT_TQ][ATT_BK], outputs [ATT_TQ][hd], key tiles */
    kt_tag *tags;
    void *gscratch;
    const gemm_ops *kop;
    size_t es, pstride;         /* bytes per element, elements per position */
    axpy_fn *axpy, *axpy4;
} att_ctx;

/* scores sc[i][k - kb] of queries i < nq (q0, rows qkvdim apart) against keys kb .. ke of
 * kv head kh: with several queries (AVX-512) against the tile transposed (cached in this
 * thread's slots), else keys as rows */
static void att_scores(const att_ctx *a, int kh, int kb, int ke, const uint8_t *k0, const float *q0, int nq)
{
    cpu *c = a->c;
    if (a->zmm && nq >= 4) {
        int slot = kb / ATT_BK % a->cap, nk = ke - kb + 1;
        float *kt = a->kts + (size_t)slot * a->hd * ATT_BK;
        kt_tag *tg = &a->tags[slot];
        if (tg->gen != a->j->gen || tg->kh != kh || tg->kb != kb || tg->nk != nk) {
            (a->f16 ? kt_f16_z : kt_f32_z)(kt, k0 + (size_t)kb * a->pstride * a->es, a->pstride * a->es, nk, a->hd);
            *tg = (kt_tag){a->j->gen, kh, kb, nk};
        }
        scores_kt(kt, nk, q0, (size_t)c->qkvdim, nq, a->hd, a->sc);
    } else
        gemm_rows(a->kop, k0 + (size_t)kb * a->pstride * a->es, a->pstride * a->es, a->hd, 0, ke - kb + 1, q0,
                  (size_t)c->qkvdim, nq, a->sc, ATT_BK, a->gscratch);
}

/* The online softmax over the tile's scores: query i (position pfirst + i) sees tile
 * offsets ra[i] .. re[i] (none if ra > re: the window or the causal mask); its scores are
 * scaled, the running max m and sum l and its output rows rescaled where the max grows,
 * and the scores replaced by exp(score - m). */
static void att_softmax(const att_ctx *a, int kb, int ke, int pfirst, int nq, float *m, float *l, int *ra, int *re)
{
    for (int i = 0; i < nq; i++) {
        int p = pfirst + i, s = a->win > 0 && p - a->win + 1 > 0 ? p - a->win + 1 : 0;
        int lo = (kb > s ? kb : s) - kb, hi = (ke < p ? ke : p) - kb;      /* tile offsets */
        ra[i] = lo, re[i] = hi;
        if (lo > hi) continue;
        float *si = a->sc + (size_t)i * ATT_BK, *oi = a->obuf + (size_t)i * a->hd;
        float mt = -INFINITY;
        if (a->zmm) mt = scale_max_z(si + lo, hi - lo + 1, a->scale);
        else
            for (int k = lo; k <= hi; k++) {
                si[k] *= a->scale;
                if (si[k] > mt) mt = si[k];
            }
        if (m[i] == -INFINITY) m[i] = mt;
        else if (mt > m[i]) {
            float al = gemm_exp(m[i] - mt);
            l[i] *= al;
            vscale(oi, al, a->hd);
            m[i] = mt;
        }
        gemm_exp_sub(si + lo, hi - lo + 1, m[i]);
    }
}

/* l += the tile's exponentials, in key order per query; eight queries with the same keys
 * side by side (eight independent chains of adds instead of one) */
static void att_lsum(const att_ctx *a, int nq, const int *ra, const int *re, float *l)
{
    for (int i = 0; i < nq;) {
        int lo = ra[i], hi = re[i], g = 1;
        while (g < 8 && i + g < nq && ra[i + g] == lo && re[i + g] == hi) g++;
        if (g == 8) {
            const float *sg = a->sc + (size_t)i * ATT_BK;
            float l0 = l[i], l1 = l[i + 1], l2 = l[i + 2], l3 = l[i + 3];
            float l4 = l[i + 4], l5 = l[i + 5], l6 = l[i + 6], l7 = l[i + 7];
            for (int k = lo; k <= hi; k++) {
                l0 += sg[k], l1 += sg[ATT_BK + k], l2 += sg[2 * ATT_BK + k], l3 += sg[3 * ATT_BK + k];
                l4 += sg[4 * ATT_BK + k], l5 += sg[5 * ATT_BK + k], l6 += sg[6 * ATT_BK + k];
                l7 += sg[7 * ATT_BK + k];
            }
            l[i] = l0, l[i + 1] = l1, l[i + 2] = l2, l[i + 3] = l3;
            l[i + 4] = l4, l[i + 5] = l5, l[i + 6] = l6, l[i + 7] = l7;
            i += 8;
        } else {
            const float *si = a->sc + (size_t)i * ATT_BK;
            for (int k = lo; k <= hi; k++) l[i] += si[k];
            i++;
        }
    }
}

/* o += P V over the tile (values from v0): four queries at once over the keys they all
 * see (from the same first key to the least last key ec: everywhere but the diagonal,
 * all their keys), then each query alone over the rest of its keys, in order */
static void att_pv(const att_ctx *a, int kb, int nq, const int *ra, const int *re, const uint8_t *v0)
{
    size_t ps = a->pstride, es = a->es;
    int hd = a->hd;
    for (int i = 0; i < nq;) {
        int lo = ra[i], hi = re[i];
        if (lo > hi) { i++; continue; }
        const uint8_t *va = v0 + (size_t)(kb + lo) * ps * es;
        int ec = hi;
        for (int q = 1; q < 4 && i + q < nq; q++) ec = re[i + q] < ec ? re[i + q] : ec;
        if (a->axpy4 && i + 4 <= nq && ra[i + 1] == lo && ra[i + 2] == lo && ra[i + 3] == lo && ec >= lo) {
            a->axpy4(a->obuf + (size_t)i * hd, a->sc + (size_t)i * ATT_BK + lo, va, ps, ec - lo + 1, hd);
            for (int q = 0; q < 4; q++)
                if (re[i + q] > ec)
                    a->axpy(a->obuf + (size_t)(i + q) * hd, a->sc + (size_t)(i + q) * ATT_BK + ec + 1,
                            v0 + (size_t)(kb + ec + 1) * ps * es, ps, re[i + q] - ec, hd);
            i += 4;
        } else {
            a->axpy(a->obuf + (size_t)i * hd, a->sc + (size_t)i * ATT_BK + lo, va, ps, hi - lo + 1, hd);
            i++;
        }
    }
}

/* query tile qt of head h: every key tile it sees, then the outputs divided by l */
static void att_qtile(const att_ctx *a, int h, int qt)
{
    const att_job *j = a->j;
    cpu *c = a->c;
    int hd = a->hd, kh = h / a->group, t0 = qt * ATT_TQ;
    int nq = j->n - t0 < ATT_TQ ? j->n - t0 : ATT_TQ;
    int pfirst = j->pos0 + t0, plast = pfirst + nq - 1;
    float m[ATT_TQ], l[ATT_TQ];
    int ra[ATT_TQ], re[ATT_TQ];
    for (int i = 0; i < nq; i++) m[i] = -INFINITY, l[i] = 0;
    memset(a->obuf, 0, (size_t)nq * hd * sizeof(float));
    const float *q0 = c->qkv + (size_t)t0 * c->qkvdim + (size_t)h * hd;
    int s0 = a->win > 0 && pfirst - a->win + 1 > 0 ? pfirst - a->win + 1 : 0;
    const uint8_t *k0 = kv_row(c, 0, j->layer) + (size_t)kh * hd * a->es;
    const uint8_t *v0 = k0 + (size_t)c->kvdim * a->es;
    for (int kb = s0 / ATT_BK * ATT_BK; kb <= plast; kb += ATT_BK) {
        int ke = kb + ATT_BK - 1 < plast ? kb + ATT_BK - 1 : plast;   /* last key of the tile */
        att_scores(a, kh, kb, ke, k0, q0, nq);
        att_softmax(a, kb, ke, pfirst, nq, m, l, ra, re);
        att_lsum(a, nq, ra, re, l);
        att_pv(a, kb, nq, ra, re, v0);
    }
    for (int i = 0; i < nq; i++) {
        float *o = c->att + (size_t)(t0 + i) * c->lda + (size_t)h * hd, *oi = a->obuf + (size_t)i * hd;
        for (int d = 0; d < hd; d++) o[d] = oi[d] / l[i];
    }
}

static void att_tiles(void *ctx, int begin, int end, int tid)
{
    const att_job *j = ctx;
    cpu *c = j->c;
    const phi3_config *cf = &c->b.m->cfg;
    att_ctx a = {.j = j, .c = c, .hd = cf->head_dim, .group = cf->n_heads / cf->n_kv_heads,
                 .win = cf->sliding_window, .zmm = gemm_vec_level() == 2, .f16 = c->kv.type == KV_F16,
                 .scale = 1.0f / sqrtf((float)cf->head_dim), .gscratch = c->gscratch[tid],
                 .es = c->es, .pstride = c->stride};
    int hd = a.hd, qtiles = (j->n + ATT_TQ - 1) / ATT_TQ;
    a.sc = c->scores[tid];
    a.obuf = a.sc + (size_t)ATT_TQ * ATT_BK;
    int ntiles = (j->pos0 + j->n - 1) / ATT_BK + 1, cap = ntiles < KT_SLOTS ? ntiles : KT_SLOTS;
    if (qtiles == 1) cap = 1;
    if (a.zmm && c->kt_cap[tid] < cap) {     /* only this thread touches [tid] */
        free(c->kt_buf[tid]);
        free(c->kt_tags[tid]);
        c->kt_buf[tid] = xmalloc_aligned((size_t)cap * hd * ATT_BK * sizeof(float));
        c->kt_tags[tid] = xcalloc((size_t)cap, sizeof(kt_tag));
        c->kt_cap[tid] = cap;
    }
    a.kts = c->kt_buf[tid];
    a.tags = c->kt_tags[tid];
    a.cap = c->kt_cap[tid];
    a.kop = gemm_ops_for(a.f16 ? ST_F16 : ST_F32);
    int vec = gemm_vec_level() > 0;
    a.axpy = a.zmm ? (a.f16 ? axpy1_f16_z : axpy1_f32_z)
                   : a.f16 ? (vec ? axpy_f16_avx : axpy_f16_c) : (vec ? axpy_f32_avx : axpy_f32_c);
    a.axpy4 = !a.zmm ? NULL : a.f16 ? axpy4_f16_z : axpy4_f32_z;
    /* an item: one head's query tiles [gi per, (gi + 1) per) (j->per: 1, or all of them where
     * the heads alone keep the threads busy, so that one thread's tiles reuse its
     * transposed key tiles) */
    int per = j->per > 0 ? j->per : 1, groups = (qtiles + per - 1) / per;
    for (int it = begin; it < end; it++) {
        int h = it / groups, gi = it % groups;
        int qend = (gi + 1) * per < qtiles ? (gi + 1) * per : qtiles;
        for (int qt = gi * per; qt < qend; qt++) att_qtile(&a, h, qt);
    }
}

/* ---- LongRoPE mode ----
 * Switching factors is NOT a matter of re-rotating the cached keys: from layer 1 on, K and
 * V of every position depend on attention outputs of the layers below, which depend on
 * the rotation used. The result a fresh pass over the sequence gives (and the fixtures
 * expect) needs the whole context recomputed from its token ids in the new mode. */

static void forward_chunk(cpu *c, const int32_t *ids, int n, float *logits, int all);

static void set_rope_mode(cpu *c, int use_long)
{
    if (use_long == c->b.rope_long) return;
    int n = c->b.n_ctx;
    c->b.n_ctx = 0;
    c->b.rope_long = use_long;
    for (int done = 0; done < n;) {
        int k = n - done < CHUNK ? n - done : CHUNK;
        forward_chunk(c, c->ids + done, k, NULL, 0);
        done += k;
    }
}

/* ---- storage ---- */

static int ensure_ids(cpu *c, int need)
{
    if (need <= c->ids_cap) return 0;
    long cap = c->ids_cap ? c->ids_cap : 64;
    while (cap < need) cap *= 2;
    int32_t *p = realloc(c->ids, (size_t)cap * sizeof *p);
    if (!p) return berr(c, "out of memory for %ld token ids", cap);
    c->ids = p;
    c->ids_cap = (int)cap;
    return 0;
}

static int ensure_capacity(cpu *c, int need)
{
    if (ensure_ids(c, need)) return -1;
    if (need <= c->kv.capacity) return 0;
    if (!c->own_kv) {
        if (!c->grow || c->grow(c->grow_ctx, &c->b, need) || c->kv.capacity < need)
            return c->b.err[0] ? -1 : berr(c, "KV store full (%d positions, need %d)", c->kv.capacity, need);
        return 0;
    }
    long cap = c->kv.capacity ? c->kv.capacity : 16;
    while (cap < need) cap *= 2;
    if (cap > c->b.max_ctx) cap = c->b.max_ctx;
    size_t bytes;
    if (__builtin_mul_overflow((size_t)cap, c->stride * c->es, &bytes))
        return berr(c, "KV cache of %ld positions is too large", cap);
    void *p = realloc(c->kv.base, bytes);
    if (!p) return berr(c, "out of memory for a KV cache of %ld positions (%zu bytes)", cap, bytes);
    c->kv.base = p;
    c->kv.capacity = (int)cap;
    return 0;
}

/* ---- the forward pass ---- */

static void hook(cpu *c, int stage, int pos0, int n, const float *x)
{
    if (c->hook) c->hook(c->hook_ctx, stage, pos0, n, x);
}

/* query tiles per attention item: all of a head's where there are at least four heads per
 * thread (balance enough: the heads' work is equal), else one */
static int att_per(const cpu *c, int n)
{
    return c->b.m->cfg.n_heads >= 4 * pool_threads(c->pool) ? (n + ATT_TQ - 1) / ATT_TQ : 1;
}
static int att_items(const cpu *c, int n, int per)
{
    int qtiles = (n + ATT_TQ - 1) / ATT_TQ;
    return c->b.m->cfg.n_heads * ((qtiles + per - 1) / per);
}

/* ---- per-token row operations, shared by the thread pool (each row's arithmetic is
 * the same whichever thread runs it) ---- */

enum { ROW_NORM, ROW_ADD_NORM, ROW_ADD, ROW_SILU, ROW_KV };
typedef struct row_job {
    cpu *c;
    int kind;
    const phi3_weight *w;       /* ROW_*NORM: the norm's weight */
    float *x, *y;               /* x: the residual stream; y: xb (norm out, add in) or hb (SiLU) */
    size_t ldx, ldy;
    int l, pos0;                /* ROW_KV: layer, first position (y: qkv rows, x: cos/sin rows) */
    int zmm;                    /* AVX-512 (set by per_row) */
} row_job;

static void kv_put_row(cpu *c, int l, int pos, float *q, const float *cs)
{
    const phi3_config *cf = &c->b.m->cfg;
    int hd = cf->head_dim, nh = cf->n_heads, nkv = cf->n_kv_heads;
    float *k = q + nh * hd;                                     /* V follows K */
    uint8_t *row = kv_row(c, pos, l);
    for (int h = 0; h < nh; h++) rope_apply(q + h * hd, cs, cs + hd / 2, hd);
    for (int h = 0; h < nkv; h++) rope_apply(k + h * hd, cs, cs + hd / 2, hd);
    if (c->kv.type == KV_F16) gemm_f32_to_f16(k, (uint16_t *)row, 2 * c->kvdim);   /* K, V adjacent */
    else memcpy(row, k, 2 * (size_t)c->kvdim * sizeof(float));
}

/* Layer l for n tokens at positions pos0.. of c's context: RoPE on their q and k rows
 * (qkv: n rows of q|k|v, cos/sin in cs), their K and V into c's cache. qkv/cs are c's
 * scratch, or a context's rows of a batch's stacked buffers (backend_cpu_forward_batch). */
static void kv_put(cpu *c, int l, int pos0, int n, float *qkv, const float *cs_all)
{
    int hd = c->b.m->cfg.head_dim;
    for (int t = 0; t < n; t++) kv_put_row(c, l, pos0 + t, qkv + (size_t)t * c->qkvdim, cs_all + (size_t)t * hd);
}

/* g[i] = u[i] * (g[i] / (1 + e[i])), 16 at a time (IEEE operations: the scalar bits) */
__attribute__((target("avx2,fma,f16c,avx512f"))) static void silu_mul_z(float *g, const float *u, const float *e, int n)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 gv = _mm512_maskz_loadu_ps(k, g + i), uv = _mm512_maskz_loadu_ps(k, u + i);
        __m512 ev = _mm512_maskz_loadu_ps(k, e + i);
        _mm512_mask_storeu_ps(g + i, k, _mm512_mul_ps(uv, _mm512_div_ps(gv, _mm512_add_ps(one, ev))));
    }
}

static void row_run(void *ctx, int begin, int end, int tid)
{
    (void)tid;
    const row_job *j = ctx;
    const phi3_config *cf = &j->c->b.m->cfg;
    int H = cf->hidden, I = cf->intermediate, hd = cf->head_dim;
    if ((j->kind == ROW_NORM || j->kind == ROW_ADD_NORM) && end - begin >= 8) {
        for (; begin + 8 <= end; begin += 8) {
            float *xs[8], *ys[8];
            for (int r = 0; r < 8; r++) {
                xs[r] = j->x + (size_t)(begin + r) * j->ldx, ys[r] = j->y + (size_t)(begin + r) * j->ldy;
                if (j->kind == ROW_ADD_NORM)
                    for (int i = 0; i < H; i++) xs[r][i] += ys[r][i];
            }
            rmsnorm8(ys, (const float *const *)xs, j->w, H, cf->rms_eps);
        }
    }
    for (int t = begin; t < end; t++) {
        float *x = j->x + (size_t)t * j->ldx, *y = j->y + (size_t)t * j->ldy;
        switch (j->kind) {
        case ROW_ADD:
        case ROW_ADD_NORM:
            for (int i = 0; i < H; i++) x[i] += y[i];
            if (j->kind == ROW_ADD) break;
            /* fall through */
        case ROW_NORM: rmsnorm(y, x, j->w, H, cf->rms_eps); break;
        case ROW_SILU:
            /* down(up * silu(gate)), silu(g) = g / (1 + exp(-g)): the exponentials first
             * (gemm_exp, one sequence in vector and scalar form, within 1 ulp of e^x on
             * [-86, 88]), then the divisions and products a vector at a time (elementwise:
             * same bits) */
            for (int i0 = 0; i0 < I; i0 += 256) {
                float e[256];
                int m = I - i0 < 256 ? I - i0 : 256;
                for (int i = 0; i < m; i++) e[i] = -y[i0 + i];
                gemm_exp_sub(e, m, 0.0f);
                if (j->zmm) silu_mul_z(y + i0, y + I + i0, e, m);
                else
                    for (int i = 0; i < m; i++) y[i0 + i] = y[I + i0 + i] * (y[i0 + i] / (1.0f + e[i]));
            }
            break;
        case ROW_KV: kv_put_row(j->c, j->l, j->pos0 + t, y, j->x + (size_t)t * hd); break;
        }
    }
}

/* n rows of j: on the pool from a few rows on (a decode step's single row stays here) */
static void per_row(cpu *c, row_job j, int n)
{
    j.c = c;
    j.zmm = gemm_vec_level() == 2;
    if (n < 4) row_run(&j, 0, n, 0);
    else pool_run(c->pool, row_run, &j, n);
}

/* token id's row of the embedding table as floats; the rows may be quantized blocks
 * (GGUF token_embd), so they are found by quant_row_bytes, not by an element size */
static void embed_row(const phi3_model *m, int32_t id, float *out)
{
    int H = m->cfg.hidden;
    size_t erow = quant_row_bytes(m->embed.dtype, H);
    quant_dequant_row(m->embed.dtype, (const uint8_t *)m->embed.data + (size_t)id * erow, out, 0, H);
}

/* n <= CHUNK tokens at positions pos0.. (already room in kv). logits: NULL, or where the
 * logits of the last token (all = 0) or of every token go. */
static void forward_chunk(cpu *c, const int32_t *ids, int n, float *logits, int all)
{
    const phi3_model *m = c->b.m;
    const phi3_config *cf = &m->cfg;
    int H = cf->hidden, hd = cf->head_dim, I = cf->intermediate;
    int pos0 = c->b.n_ctx;
    memmove(c->ids + pos0, ids, (size_t)n * sizeof *ids);   /* ids may already be there */
    for (int t = 0; t < n; t++) embed_row(m, ids[t], c->x + (size_t)t * H);
    hook(c, 0, pos0, n, c->x);
    const float *inv = c->inv_freq[c->b.rope_long];
    for (int t = 0; t < n; t++) rope_cos_sin(cf, inv, pos0 + t, c->cs + (size_t)t * hd, c->cs + (size_t)t * hd + hd / 2);

    size_t ldx = (size_t)c->ldx;
    for (int l = 0; l < cf->n_layers; l++) {
        const phi3_layer *L = &m->layers[l];
        per_row(c, (row_job){.kind = ROW_NORM, .w = &L->ln1, .x = c->x, .ldx = H, .y = c->xb, .ldy = ldx}, n);
        matmul(c, &L->qkv, 0, c->qkvdim, c->xb, c->ldx, n, c->qkv, c->qkvdim);
        per_row(c, (row_job){.kind = ROW_KV, .l = l, .pos0 = pos0, .y = c->qkv, .ldy = c->qkvdim, .x = c->cs}, n);
        att_job aj = {c, l, pos0, n, ++c->att_gen, att_per(c, n)};
        pool_run(c->pool, att_tiles, &aj, att_items(c, n, aj.per));
        matmul(c, &L->o, 0, H, c->att, c->lda, n, c->xb, c->ldx);
        per_row(c, (row_job){.kind = ROW_ADD_NORM, .w = &L->ln2, .x = c->x, .ldx = H, .y = c->xb, .ldy = ldx}, n);
        matmul(c, &L->gate_up, 0, 2 * I, c->xb, c->ldx, n, c->hb, c->ldh);
        per_row(c, (row_job){.kind = ROW_SILU, .y = c->hb, .ldy = c->ldh, .x = c->x}, n);
        matmul(c, &L->down, 0, H, c->hb, c->ldh, n, c->xb, c->ldx);
        per_row(c, (row_job){.kind = ROW_ADD, .x = c->x, .ldx = H, .y = c->xb, .ldy = ldx}, n);
        hook(c, l + 1, pos0, n, c->x);
    }
    c->b.n_ctx += n;
    if (!logits && !c->hook) return;
    /* Final norm and lm_head for the positions whose logits are wanted. */
    int first = all || c->hook ? 0 : n - 1;
    per_row(c, (row_job){.kind = ROW_NORM, .w = &m->norm, .x = c->x + (size_t)first * H, .ldx = H,
                      .y = c->xb + (size_t)first * ldx, .ldy = ldx}, n - first);
    if (c->hook) {
        /* the observer takes [n, hidden] rows: the normed rows packed into x (done with) */
        for (int t = 0; t < n; t++) memcpy(c->x + (size_t)t * H, c->xb + (size_t)t * ldx, (size_t)H * sizeof(float));
        hook(c, cf->n_layers + 1, pos0, n, c->x);
    }
    if (!logits) return;
    if (!all) first = n - 1;
    matmul(c, &m->lm_head, 0, cf->vocab, c->xb + (size_t)first * ldx, c->ldx, n - first, logits, cf->vocab);
}

static int cpu_forward(backend *b, const int32_t *ids, int n, float *logits, int all)
{
    cpu *c = (cpu *)b;
    const phi3_config *cf = &b->m->cfg;
    b->err[0] = 0;
    if (n <= 0) return n < 0 ? berr(c, "negative token count") : 0;
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= cf->vocab)
            return berr(c, "token id %d out of range [0, %d)", ids[i], cf->vocab);
    if ((long)b->n_ctx + n > b->max_ctx)
        return berr(c, "context of %ld tokens exceeds the limit of %d", (long)b->n_ctx + n, b->max_ctx);
    if (ensure_capacity(c, b->n_ctx + n)) return -1;
    /* LongRoPE: the factors follow the length of the whole sequence. */
    set_rope_mode(c, rope_use_long(cf, (long)b->n_ctx + n));
    for (int done = 0; done < n;) {
        int k = n - done < CHUNK ? n - done : CHUNK;
        float *lg = NULL;
        if (logits && all) lg = logits + (size_t)done * cf->vocab;
        else if (logits && done + k == n) lg = logits;
        forward_chunk(c, ids + done, k, lg, all);
        done += k;
    }
    return 0;
}

static int cpu_truncate(backend *b, int n)
{
    cpu *c = (cpu *)b;
    if (n < 0 || n > b->n_ctx) return berr(c, "cannot truncate a context of %d to %d", b->n_ctx, n);
    b->n_ctx = n;
    set_rope_mode(c, rope_use_long(&b->m->cfg, n));
    return 0;
}

/* some product's weights (the embedding table is only looked up) satisfy pred */
static int model_any_weight(const struct phi3_model *m, int (*pred)(st_dtype))
{
    if (pred(m->lm_head.dtype)) return 1;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const phi3_layer *L = &m->layers[l];
        if (pred(L->qkv.dtype) || pred(L->o.dtype) || pred(L->gate_up.dtype) || pred(L->down.dtype)) return 1;
    }
    return 0;
}

/* GGUF blocks: products of 4..12 tokens dequantize rows (mm_rows_dq) */
static int model_has_quant(const struct phi3_model *m) { return model_any_weight(m, quant_is_block); }

/* qlimb is opt-in (PHI3_QUANT_LIMBS=1, qlimb.h) and applies to Q4_K, Q5_K and Q6_K weights */
static int model_uses_limbs(const struct phi3_model *m)
{
    return qlimb_enabled() && model_any_weight(m, qlimb_supported);
}

int backend_cpu_limbs(const backend *b)
{
    return !strcmp(b->ops->name, "cpu") && ((const cpu *)b)->limbx != NULL;
}

static void cpu_destroy(backend *b)
{
    cpu *c = (cpu *)b;
    if (!c) return;
    for (int t = 0; c->scores && t < pool_threads(c->pool); t++) free(c->scores[t]);
    free(c->scores);
    for (int t = 0; c->kt_buf && t < pool_threads(c->pool); t++) free(c->kt_buf[t]), free(c->kt_tags[t]);
    free(c->kt_buf);
    free(c->kt_tags);
    free(c->kt_cap);
    for (int t = 0; c->gscratch && t < pool_threads(c->pool); t++) free(c->gscratch[t]);
    free(c->gscratch);
    free(c->limbx);
    free(c->xq);
    if (c->dq)
        for (int t = 0; t < pool_threads(c->pool); t++) free(c->dq[t]);
    free(c->dq);
    if (!c->shared_pool) pool_free(c->pool);
    if (c->own_kv) free(c->kv.base);
    free(c->ids);
    free(c->inv_freq[0]);
    free(c->inv_freq[1]);
    free(c->x);
    free(c->xb);
    free(c->qkv);
    free(c->att);
    free(c->hb);
    free(c->cs);
    free(c);
}

static const backend_ops cpu_ops = {
    .name = "cpu", .forward = cpu_forward, .truncate = cpu_truncate, .destroy = cpu_destroy};

backend *backend_cpu_new(const struct phi3_model *m, int max_ctx, int threads, const kv_store *kv,
                         char *err, size_t errlen)
{
    const phi3_config *cf = &m->cfg;
    if (max_ctx <= 0 || max_ctx > cf->max_pos) max_ctx = cf->max_pos;
    if (cf->head_dim > 1024) {
        snprintf(err, errlen, "head_dim %d too large for the CPU backend", cf->head_dim);
        return NULL;
    }
    cpu *c = xcalloc(1, sizeof *c);
    c->b.ops = &cpu_ops;
    c->b.m = m;
    c->b.max_ctx = max_ctx;
    c->kvdim = cf->n_kv_heads * cf->head_dim;
    c->qkvdim = (cf->n_heads + 2 * cf->n_kv_heads) * cf->head_dim;
    c->stride = kv_pos_floats(m);
    c->es = 4;
    for (int i = 0; i < 2; i++) {
        c->inv_freq[i] = xmalloc((size_t)cf->head_dim / 2 * sizeof(float));
        rope_inv_freq(cf, i, c->inv_freq[i]);
    }
    size_t H = (size_t)cf->hidden;
    c->ldx = pad_ld(cf->hidden);
    c->lda = pad_ld(cf->n_heads * cf->head_dim);
    c->ldh = pad_ld(2 * cf->intermediate);
    c->x = xmalloc_aligned(CHUNK * H * sizeof(float));
    c->xb = xmalloc_aligned(CHUNK * (size_t)c->ldx * sizeof(float));
    c->qkv = xmalloc_aligned(CHUNK * (size_t)c->qkvdim * sizeof(float));
    c->att = xmalloc_aligned(CHUNK * (size_t)c->lda * sizeof(float));
    c->hb = xmalloc_aligned(CHUNK * (size_t)c->ldh * sizeof(float));
    c->cs = xmalloc_aligned(CHUNK * (size_t)cf->head_dim * sizeof(float));
    c->pool = pool_new(threads);
    c->kt_buf = xcalloc((size_t)pool_threads(c->pool), sizeof *c->kt_buf);
    c->kt_tags = xcalloc((size_t)pool_threads(c->pool), sizeof *c->kt_tags);
    c->kt_cap = xcalloc((size_t)pool_threads(c->pool), sizeof *c->kt_cap);
    c->scores = xcalloc((size_t)pool_threads(c->pool), sizeof *c->scores);
    for (int t = 0; t < pool_threads(c->pool); t++)
        c->scores[t] = xmalloc_aligned(att_scratch_floats(cf->head_dim) * sizeof(float));
    c->gscratch = xcalloc((size_t)pool_threads(c->pool), sizeof *c->gscratch);
    for (int t = 0; t < pool_threads(c->pool); t++) c->gscratch[t] = xmalloc_aligned(gemm_scratch_floats() * sizeof(float));
    /* the widest activation row a product takes */
    int kmax = cf->hidden > cf->intermediate ? cf->hidden : cf->intermediate;
    if (cf->n_heads * cf->head_dim > kmax) kmax = cf->n_heads * cf->head_dim;
    /* xq and dq are allocated at a context's first product that uses them (a server's
     * contexts lead batched steps in turn, most of them never) */
    c->xq_cap = (size_t)12 * (size_t)kmax;      /* gemm_xq_floats is at most 12 K */
    c->dq_k = model_has_quant(m) ? kmax : 0;
    if (model_uses_limbs(m)) {
        c->limbx_stride = qlimb_xbytes(kmax);
        c->limbx = xmalloc_aligned(3 * c->limbx_stride);
    }
    if (kv) {
        c->kv = *kv;
        c->es = kv_type_size(kv->type);
    } else c->own_kv = 1;
    return &c->b;
}

int backend_cpu_set_kv(backend *b, const kv_store *kv)
{
    cpu *c = (cpu *)b;
    if (c->own_kv) free(c->kv.base);
    c->own_kv = 0;
    c->kv = *kv;
    c->es = kv_type_size(kv->type);
    return 0;
}

int backend_cpu_set_kv_type(backend *b, kv_type t)
{
    cpu *c = (cpu *)b;
    if (t == c->kv.type) return 0;
    if (!c->own_kv || b->n_ctx > 0) return berr(c, "the KV type of a used or external store cannot change");
    free(c->kv.base);
    c->kv.base = NULL;
    c->kv.capacity = 0;
    c->kv.type = t;
    c->es = kv_type_size(t);
    return 0;
}

int backend_cpu_resume(backend *b, const int32_t *ids, int n_ctx, int rope_long)
{
    cpu *c = (cpu *)b;
    if (n_ctx < 0 || n_ctx > c->kv.capacity || n_ctx > b->max_ctx)
        return berr(c, "cannot resume %d positions (store holds %d, limit %d)", n_ctx, c->kv.capacity,
                    b->max_ctx);
    for (int i = 0; i < n_ctx; i++)
        if (ids[i] < 0 || ids[i] >= b->m->cfg.vocab)
            return berr(c, "token id %d out of range [0, %d)", ids[i], b->m->cfg.vocab);
    if (ensure_ids(c, n_ctx)) return -1;
    if (n_ctx > 0) memcpy(c->ids, ids, (size_t)n_ctx * sizeof *ids);
    b->n_ctx = n_ctx;
    b->rope_long = rope_long ? 1 : 0;
    return 0;
}

void backend_cpu_set_grow(backend *b, kv_grow_fn fn, void *ctx)
{
    cpu *c = (cpu *)b;
    c->grow = fn;
    c->grow_ctx = ctx;
}

void backend_cpu_set_hidden_hook(backend *b, cpu_hidden_fn fn, void *ctx)
{
    cpu *c = (cpu *)b;
    c->hook = fn;
    c->hook_ctx = ctx;
}

size_t backend_cpu_kv_bytes(const backend *b)
{
    const cpu *c = (const cpu *)b;
    return c->own_kv ? (size_t)c->kv.capacity * c->stride * c->es : 0;
}

/* ---- many contexts in one forward (phi3-run --serve) ----
 * The token rows of every context are stacked so that each matmul reads the weights once
 * for all of them; RoPE, the KV rows and attention stay per context (its positions, its
 * LongRoPE mode, its cache). Every output element is still computed by one thread in the
 * fixed order of forward_chunk (the matmul's per-row order does not depend on the other
 * rows), so each context gets the bits its own forward would give. */

struct cpu_batch {
    float *x, *xb, *qkv, *att, *hb, *cs, *lx, *lg;
    int rows_cap, lrows_cap;
    att_job *jobs;                      /* per context */
    int *first;                         /* [k + 1]: first attention item of each context */
    float **sq, **sa;                   /* each context's own scratch, put back after */
    int k_cap;
};

/* The attention items of several contexts as one parallel loop: items [first[i],
 * first[i + 1]) are context i's. The threads are those of the first context's pool;
 * every context has as many (its per-thread scratch is indexed by tid). */
typedef struct att_multi {
    att_job *j;
    int *first;
    int k;
} att_multi;

static void att_multi_run(void *ctx, int begin, int end, int tid)
{
    att_multi *a = ctx;
    for (int i = 0; i < a->k; i++) {
        int b0 = a->first[i], e0 = a->first[i + 1];
        int b = begin > b0 ? begin : b0, e = end < e0 ? end : e0;
        if (b < e) att_tiles(&a->j[i], b - b0, e - b0, tid);
    }
}

void backend_cpu_batch_free(cpu_batch *w)
{
    if (!w) return;
    free(w->x);
    free(w->xb);
    free(w->qkv);
    free(w->att);
    free(w->hb);
    free(w->cs);
    free(w->lx);
    free(w->lg);
    free(w->jobs);
    free(w->first);
    free(w->sq);
    free(w->sa);
    free(w);
}

static int batch_reserve(cpu_batch *w, const phi3_config *cf, int qkvdim, int lda, int rows, int lrows)
{
    if (rows > w->rows_cap) {
        /* a step's scratch (nothing kept across steps): freed and allocated again, 64-byte
         * aligned like the backend's own buffers */
        size_t r = (size_t)rows, H = (size_t)cf->hidden;
        float **bufs[6] = {&w->x, &w->xb, &w->qkv, &w->att, &w->hb, &w->cs};
        size_t floats[6] = {r * H, r * H, r * (size_t)qkvdim, r * (size_t)lda, r * 2 * (size_t)cf->intermediate,
                            r * (size_t)cf->head_dim};
        int bad = 0;
        for (int i = 0; i < 6; i++) {
            free(*bufs[i]);
            *bufs[i] = aligned_alloc(64, (floats[i] * sizeof(float) + 63) / 64 * 64);
            bad |= !*bufs[i];
        }
        if (bad) {
            w->rows_cap = 0;
            return -1;
        }
        w->rows_cap = rows;
    }
    if (lrows > w->lrows_cap) {
        float *a = realloc(w->lx, (size_t)lrows * cf->hidden * sizeof(float));
        if (a) w->lx = a;
        float *b = realloc(w->lg, (size_t)lrows * cf->vocab * sizeof(float));
        if (b) w->lg = b;
        if (!a || !b) return -1;
        w->lrows_cap = lrows;
    }
    return 0;
}

int backend_cpu_forward_batch(cpu_batch **ws, backend **bs, const int32_t **ids, const int *n, float **logits,
                              const int *all, int k)
{
    if (k <= 0) return 0;
    cpu *c0 = (cpu *)bs[0];
    const phi3_model *m = c0->b.m;
    const phi3_config *cf = &m->cfg;
    int H = cf->hidden, hd = cf->head_dim, I = cf->intermediate;
    int qkvdim = c0->qkvdim;
    int rows = 0, lrows = 0;
    for (int i = 0; i < k; i++) {
        cpu *c = (cpu *)bs[i];
        backend *b = bs[i];
        b->err[0] = 0;
        if (b->m != m || b->ops != &cpu_ops) return berr(c0, "batched forward over different models or backends");
        if (n[i] < 0 || n[i] > CHUNK) return berr(c, "batched forward of %d tokens (1..%d per context)", n[i], CHUNK);
        for (int t = 0; t < n[i]; t++)
            if (ids[i][t] < 0 || ids[i][t] >= cf->vocab)
                return berr(c, "token id %d out of range [0, %d)", ids[i][t], cf->vocab);
        if ((long)b->n_ctx + n[i] > b->max_ctx)
            return berr(c, "context of %ld tokens exceeds the limit of %d", (long)b->n_ctx + n[i], b->max_ctx);
        if (ensure_capacity(c, b->n_ctx + n[i])) return -1;
        set_rope_mode(c, rope_use_long(cf, (long)b->n_ctx + n[i]));
        rows += n[i];
        if (logits[i]) lrows += all[i] ? n[i] : 1;
    }
    if (!*ws) *ws = xcalloc(1, sizeof **ws);
    cpu_batch *w = *ws;
    if (batch_reserve(w, cf, qkvdim, c0->lda, rows, lrows)) return berr(c0, "out of memory for a batch of %d rows", rows);
    if (k > w->k_cap) {
        w->jobs = xrealloc(w->jobs, (size_t)k * sizeof *w->jobs);
        w->first = xrealloc(w->first, (size_t)(k + 1) * sizeof *w->first);
        w->sq = xrealloc(w->sq, (size_t)k * sizeof *w->sq);
        w->sa = xrealloc(w->sa, (size_t)k * sizeof *w->sa);
        w->k_cap = k;
    }
    w->first[0] = 0;
    int same_threads = 1;
    for (int i = 1; i < k; i++) same_threads &= pool_threads(((cpu *)bs[i])->pool) == pool_threads(c0->pool);

    for (int i = 0, r = 0; i < k; r += n[i], i++) {
        cpu *c = (cpu *)bs[i];
        int pos0 = c->b.n_ctx;
        memmove(c->ids + pos0, ids[i], (size_t)n[i] * sizeof *ids[i]);
        const float *inv = c->inv_freq[c->b.rope_long];
        for (int t = 0; t < n[i]; t++) {
            embed_row(m, ids[i][t], w->x + (size_t)(r + t) * H);
            float *cs = w->cs + (size_t)(r + t) * hd;
            rope_cos_sin(cf, inv, pos0 + t, cs, cs + hd / 2);
        }
    }
    for (int l = 0; l < cf->n_layers; l++) {
        const phi3_layer *L = &m->layers[l];
        per_row(c0, (row_job){.kind = ROW_NORM, .w = &L->ln1, .x = w->x, .ldx = H, .y = w->xb, .ldy = H}, rows);
        matmul(c0, &L->qkv, 0, qkvdim, w->xb, H, rows, w->qkv, qkvdim);
        /* RoPE and KV rows per context; then the attention of every context in one
         * parallel loop, each over its own cache, with its rows of the stacked buffers
         * standing in for its scratch (att_tiles reads c->qkv, writes c->att) */
        for (int i = 0, r = 0; i < k; r += n[i], i++) {
            cpu *c = (cpu *)bs[i];
            kv_put(c, l, c->b.n_ctx, n[i], w->qkv + (size_t)r * qkvdim, w->cs + (size_t)r * hd);
            w->jobs[i] = (att_job){c, l, c->b.n_ctx, n[i], ++c->att_gen, 1};
            w->first[i + 1] = w->first[i] + att_items(c, n[i], 1);
            w->sq[i] = c->qkv;
            w->sa[i] = c->att;
            c->qkv = w->qkv + (size_t)r * qkvdim;
            c->att = w->att + (size_t)r * c0->lda;
        }
        if (same_threads) {
            att_multi am = {w->jobs, w->first, k};
            pool_run(c0->pool, att_multi_run, &am, w->first[k]);
        } else {
            for (int i = 0; i < k; i++) pool_run(((cpu *)bs[i])->pool, att_tiles, &w->jobs[i], w->first[i + 1] - w->first[i]);
        }
        for (int i = 0; i < k; i++) {
            ((cpu *)bs[i])->qkv = w->sq[i];
            ((cpu *)bs[i])->att = w->sa[i];
        }
        matmul(c0, &L->o, 0, H, w->att, c0->lda, rows, w->xb, H);
        per_row(c0, (row_job){.kind = ROW_ADD_NORM, .w = &L->ln2, .x = w->x, .ldx = H, .y = w->xb, .ldy = H}, rows);
        matmul(c0, &L->gate_up, 0, 2 * I, w->xb, H, rows, w->hb, 2 * I);
        per_row(c0, (row_job){.kind = ROW_SILU, .y = w->hb, .ldy = 2 * (size_t)I, .x = w->x}, rows);
        matmul(c0, &L->down, 0, H, w->hb, 2 * I, rows, w->xb, H);
        per_row(c0, (row_job){.kind = ROW_ADD, .x = w->x, .ldx = H, .y = w->xb, .ldy = H}, rows);
    }
    /* final norm of the rows whose logits are wanted, stacked, then one lm_head */
    int lr = 0;
    for (int i = 0, r = 0; i < k; r += n[i], i++) {
        bs[i]->n_ctx += n[i];
        if (!logits[i]) continue;
        for (int t = all[i] ? 0 : n[i] - 1; t < n[i]; t++, lr++)
            rmsnorm(w->lx + (size_t)lr * H, w->x + (size_t)(r + t) * H, &m->norm, H, cf->rms_eps);
    }
    if (lr) matmul(c0, &m->lm_head, 0, cf->vocab, w->lx, H, lr, w->lg, cf->vocab);
    lr = 0;
    for (int i = 0; i < k; i++) {
        if (!logits[i]) continue;
        int cnt = all[i] ? n[i] : 1;
        memcpy(logits[i], w->lg + (size_t)lr * cf->vocab, (size_t)cnt * cf->vocab * sizeof(float));
        lr += cnt;
    }
    return 0;
}

int backend_cpu_share_pool(backend *b, const backend *from)
{
    cpu *c = (cpu *)b;
    const cpu *f = (const cpu *)from;
    if (b->ops != &cpu_ops || from->ops != &cpu_ops || pool_threads(c->pool) != pool_threads(f->pool)) return -1;
    if (c->pool == f->pool) return 0;
    if (!c->shared_pool) pool_free(c->pool);
    c->pool = f->pool;
    c->shared_pool = 1;
    return 0;
}

/* Every kernel path (AVX-512, AVX2, scalar) gives the same bits: the canonical order of
 * gemm.h. So a session need not tell them apart: one value for all. */
int backend_cpu_kernel(void) { return 1; }
