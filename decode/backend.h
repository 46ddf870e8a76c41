/* backend.h: the interface every compute backend of phi3-run implements (CPU reference,
 * CUDA). A backend holds one growing context: the KV cache of positions [0, n_ctx). */
#ifndef PHI3_BACKEND_H
#define PHI3_BACKEND_H
#include <stddef.h>
#include <stdint.h>

struct phi3_model;                      /* embed/model.h: config + mmapped tensors */

/* KV storage of the CPU backend, position-major so that a context can grow by appending
 * and a prefix of n positions is ONE contiguous block (n * pos_stride elements), which is
 * what a session (shared memory) or the CUDA upload copies:
 *
 *   row(p, l) = base + (size_t)p * pos_stride + (size_t)l * 2 * kvdim   (in elements)
 *   row[0      .. kvdim)   K after RoPE (rotated with the factors of rope_long)
 *   row[kvdim  .. 2kvdim)  V
 *   kvdim = n_kv_heads * head_dim, pos_stride = n_layers * 2 * kvdim; elements are
 *   float32 (KV_F32, the default) or IEEE half (KV_F16, phi3-run --kv-type f16: K and V
 *   rounded to nearest even when written, widened exactly when read).
 * (Session layout version 1 also stored K before RoPE as a third part: never read, since
 * the LongRoPE switch recomputes the context from its ids, see forward.)
 */
typedef enum kv_type { KV_F32 = 0, KV_F16 = 1 } kv_type;

typedef struct kv_store {
    void *base;
    int capacity;                       /* positions that fit in base */
    kv_type type;
} kv_store;

size_t kv_pos_floats(const struct phi3_model *m);      /* pos_stride above, in elements */
size_t kv_type_size(kv_type t);                        /* bytes per element: 4 or 2 */
const char *kv_type_name(kv_type t);                   /* "f32", "f16" */

typedef struct backend backend;

typedef struct backend_ops {
    const char *name;                   /* "cpu", "cuda" */
    /* Append n tokens at positions [n_ctx, n_ctx + n). Writes logits of the last position
     * into logits (n_vocab floats), or of every position if all (n * n_vocab floats).
     * logits may be NULL (prefill only). If the context crosses
     * original_max_position_embeddings, the cached context is first RECOMPUTED from its
     * token ids with the long factors: re-rotating the cached keys is not enough, since
     * K and V of layers >= 1 depend on the rotation used in the layers below (the
     * tiny-longrope cross fixture fails from step 25 with re-rotation alone). 0 ok; -1
     * error with message in b->err. */
    int (*forward)(backend *b, const int32_t *ids, int n, float *logits, int all);
    /* Forget positions >= n (n <= n_ctx). Recomputes the context with the short factors
     * if it falls to <= original_max. */
    int (*truncate)(backend *b, int n);
    void (*destroy)(backend *b);
    /* Sessions on a device backend (NULL on the CPU backend, whose cache IS the session's
     * shared memory): kv_load replaces the context by n positions of rows in the CPU
     * layout above (f32, rotated as rope_long says) whose token ids are ids (needed to
     * recompute the context at a LongRoPE switch); kv_save writes positions [from, to)
     * of the device cache back in that layout, at rows + p * pos_stride (rows is the
     * base of the whole store, position 0, not the row of from). Rows are KV_F32. 0 ok;
     * -1 error in b->err. */
    int (*kv_load)(backend *b, const int32_t *ids, const float *rows, int n, int rope_long);
    int (*kv_save)(backend *b, int from, int to, float *rows);
} backend_ops;

struct backend {
    const backend_ops *ops;
    const struct phi3_model *m;
    int n_ctx;                          /* positions held */
    int max_ctx;                        /* limit (<= max_position_embeddings) */
    int rope_long;                      /* cached keys use the long factors */
    char err[256];
};

/* CPU backend. kv: external storage (a session's shared memory) or NULL to allocate its
 * own (float32; backend_cpu_set_kv_type before the first forward picks half), growing as
 * needed up to max_ctx. With external kv (of kv->type) the caller grows it via
 * backend_cpu_set_kv (and may resume a context of n_ctx positions already stored there,
 * rotated as rope_long says, whose token ids are ids). threads <= 0: every core. */
backend *backend_cpu_new(const struct phi3_model *m, int max_ctx, int threads,
                         const kv_store *kv, char *err, size_t errlen);
int backend_cpu_set_kv(backend *b, const kv_store *kv);
int backend_cpu_set_kv_type(backend *b, kv_type t);    /* own store, empty context; 0 ok */
int backend_cpu_resume(backend *b, const int32_t *ids, int n_ctx, int rope_long);
/* Called by the CPU backend when external kv is too small for need positions; set by the
 * session code. Returns 0 after calling backend_cpu_set_kv with a larger store. */
typedef int (*kv_grow_fn)(void *ctx, backend *b, int need);
void backend_cpu_set_grow(backend *b, kv_grow_fn fn, void *ctx);

/* CUDA backend: the .cu files in decode/ and kernels/ form the plug-in phi3-cuda.so
 * (built when nvcc is found), which decode/cuda_loader.c loads on first use from beside
 * the executable, from ../lib/phi3/, or from $PHI3_CUDA_LIB. backend_cuda_available() is 0
 * without the plug-in, its libraries, or a device; backend_cuda_new says which. */
int backend_cuda_available(void);
/* Whether the CUDA backend can run model m (0 for quantized weights, which it does not
 * read yet): --backend auto picks the CPU for such a model. */
int backend_cuda_supports(const struct phi3_model *m);
/* Sessions on the CUDA backend convert to and from session layout 2 (K, V per layer),
 * which has not yet run on a GPU: they need PHI3_CUDA_SESSIONS=1 until a GPU check has
 * passed with it (tests/gpu/check.sh sets it). */
#define PHI3_CUDA_SESSIONS_ENV "PHI3_CUDA_SESSIONS"
backend *backend_cuda_new(const struct phi3_model *m, int max_ctx, char *err, size_t errlen);
/* Opt-in (PHI3_CUDA_BATCH=1; compiled, not yet run on a GPU): backend_cuda_batch_enabled()
 * is 1 when it is set and the plug-in has the entry points. backend_cuda_new_shared makes a
 * backend that reads base's device weights (base outlives it): N streams, one copy of the
 * weights. backend_cuda_forward_batch runs one forward over k such backends (n[i] tokens,
 * logits[i] as forward gives them, all[i]: every position); -1 with bs[0]->err when the
 * step cannot be stacked (nothing computed: run them one by one). */
int backend_cuda_batch_enabled(void);
backend *backend_cuda_new_shared(backend *base, int max_ctx, char *err, size_t errlen);
int backend_cuda_forward_batch(backend **bs, const int32_t **ids, const int *n, float **logits, const int *all,
                               int k);

#endif
