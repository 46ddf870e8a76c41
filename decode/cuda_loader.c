/* cuda_loader.c: finds and loads the CUDA backend plug-in (phi3-cuda.so) on first use,
 * so that phi3-run starts, and the CPU backend runs, where the CUDA libraries are absent
 * (a CUDA build copied to a machine without them; libcublas alone maps ~200 MB). */
#include "decode/backend.h"
#include "decode/rope.h"
#include "embed/model.h"
#include "embed/quant.h"
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int (*avail_fn)(void);
typedef backend *(*new_fn)(const struct phi3_model *, int, char *, size_t);
typedef backend *(*new_shared_fn)(backend *, int, char *, size_t);
typedef int (*batch_fn)(backend **, const int32_t **, const int *, float **, const int *, int);

static int tried;
static avail_fn p_available;
static new_fn p_new;
static new_shared_fn p_new_shared;       /* optional entry points (opt-in batching) */
static batch_fn p_batch;
static char why[512] = "this build has no CUDA backend (phi3-cuda.so is built when nvcc is found)";

/* The plug-in resolves these against the executable (linked with -rdynamic): keep them in
 * every phi3-run, referenced or not by the rest of it. */
void *const cuda_loader_exports[] = {(void *)kv_pos_floats, (void *)model_to_f32,
                                     (void *)rope_inv_freq, (void *)rope_use_long,
                                     (void *)st_dtype_size, (void *)quant_dequant_row,
                                     (void *)quant_row_bytes};

static int try_open(const char *path)
{
    if (access(path, F_OK) != 0) return 0;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(why, sizeof why, "cannot load the CUDA backend %s: %s", path, dlerror());
        return -1;
    }
    p_available = (avail_fn)(uintptr_t)dlsym(h, "phi3_cuda_available");
    p_new = (new_fn)(uintptr_t)dlsym(h, "phi3_cuda_new");
    p_new_shared = (new_shared_fn)(uintptr_t)dlsym(h, "phi3_cuda_new_shared");
    p_batch = (batch_fn)(uintptr_t)dlsym(h, "phi3_cuda_forward_batch");
    if (!p_available || !p_new) {
        snprintf(why, sizeof why, "%s is not a phi3 CUDA backend (missing entry points)", path);
        p_available = NULL;
        p_new = NULL;
        dlclose(h);
        return -1;
    }
    return 1;
}

static void load(void)
{
    if (tried) return;
    tried = 1;
    const char *env = getenv("PHI3_CUDA_LIB");
    if (env && *env) {
        if (try_open(env) == 0) snprintf(why, sizeof why, "PHI3_CUDA_LIB=%s: no such file", env);
        return;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return;
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (!slash) return;
    *slash = 0;
    const char *rel[] = {"/phi3-cuda.so", "/../lib/phi3/phi3-cuda.so"};
    for (int i = 0; i < 2; i++) {
        char path[PATH_MAX + 32];
        snprintf(path, sizeof path, "%s%s", exe, rel[i]);
        if (try_open(path)) return;
    }
}

int backend_cuda_available(void)
{
    load();
    return p_available && p_available();
}

/* Quantized GGUF weights (block types) on the CUDA backend are opt-in
 * (PHI3_CUDA_QUANT=1: kernels/quant.cu, compiled but not yet run on a GPU); without it
 * such a model is refused here with a clear line. */
static int quantized_weight(const phi3_model *m)
{
    if (quant_is_block(m->embed.dtype) || quant_is_block(m->lm_head.dtype)) return 1;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const phi3_layer *y = &m->layers[l];
        if (quant_is_block(y->qkv.dtype) || quant_is_block(y->o.dtype) || quant_is_block(y->gate_up.dtype) ||
            quant_is_block(y->down.dtype))
            return 1;
    }
    return 0;
}

static int quant_opt_in(void)
{
    const char *v = getenv("PHI3_CUDA_QUANT");
    return v && !strcmp(v, "1");
}

int backend_cuda_supports(const struct phi3_model *m) { return !quantized_weight(m) || quant_opt_in(); }

backend *backend_cuda_new(const struct phi3_model *m, int max_ctx, char *err, size_t errlen)
{
    if (quantized_weight(m) && !quant_opt_in()) {
        snprintf(err, errlen, "quantized weights on the CUDA backend are opt-in and unverified "
                              "(PHI3_CUDA_QUANT=1), or use --backend cpu");
        return NULL;
    }
    load();
    if (!p_new) {
        snprintf(err, errlen, "%s", why);
        return NULL;
    }
    return p_new(m, max_ctx, err, errlen);
}

int backend_cuda_batch_enabled(void)
{
    const char *v = getenv("PHI3_CUDA_BATCH");
    if (!v || strcmp(v, "1")) return 0;
    load();
    return p_new_shared && p_batch;
}

backend *backend_cuda_new_shared(backend *base, int max_ctx, char *err, size_t errlen)
{
    load();
    if (!p_new_shared) {
        snprintf(err, errlen, "%s", p_new ? "this CUDA backend cannot share its weights" : why);
        return NULL;
    }
    return p_new_shared(base, max_ctx, err, errlen);
}

int backend_cuda_forward_batch(backend **bs, const int32_t **ids, const int *n, float **logits, const int *all,
                               int k)
{
    load();
    if (!p_batch) {
        snprintf(bs[0]->err, sizeof bs[0]->err, "this CUDA backend has no batched forward");
        return -1;
    }
    return p_batch(bs, ids, n, logits, all, k);
}
