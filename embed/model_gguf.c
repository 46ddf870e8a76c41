/* model_gguf.c: load a Phi-3 model from one GGUF file (llama.cpp's "phi3" architecture):
 * the config from the phi3.* metadata, the LongRoPE factors from their tensors, every
 * weight bound under llama.cpp's tensor names with the shape the forward pass expects. */
#include "embed/gguf.h"
#include "embed/model.h"
#include "embed/quant.h"
#include "shared/util.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int model_gguf_dtype(uint32_t ggml_type, st_dtype *d)
{
    switch (ggml_type) {
    case GGML_F32: case GGML_F16: case GGML_BF16:
    case GGML_Q8_0: case GGML_Q4_0: case GGML_Q4_K: case GGML_Q5_K: case GGML_Q6_K:
        *d = quant_from_ggml(ggml_type);
        return *d == ST_NDTYPE ? -1 : 0;
    default: return -1;
    }
}

int model_weight_row_f32(const phi3_weight *w, int64_t r, float *dst)
{
    size_t rb = quant_row_bytes(w->dtype, w->cols);
    if (!rb) return -1;
    quant_dequant_row(w->dtype, (const uint8_t *)w->data + (size_t)r * rb, dst, 0, w->cols);
    return 0;
}

/* Integer metadata key (phi3.NAME) in [lo, hi]; absent: def, or an error if def < lo. */
static int meta_int(const gguf_file *g, const char *key, long lo, long hi, long def, int *out, char *err,
                    size_t errlen)
{
    int64_t v;
    int r = gguf_get_int(g, key, lo, hi, &v, err, errlen);
    if (r < 0) return -1;
    if (r == 0) {
        if (def < lo) return phi3_fail(err, errlen, "metadata %s: missing", key);
        v = def;
    }
    *out = (int)v;
    return 0;
}

/* A float key in the open interval (lo, hi), also after rounding to float32 (the forward
 * pass keeps eps and the attention factor as float32: an F64 1e-300 would be zero there),
 * the ranges config.json is held to (model.c cfg_num); absent: def. */
static int meta_num(const gguf_file *g, const char *key, double def, double lo, double hi, double *out, char *err,
                    size_t errlen)
{
    int r = gguf_get_float(g, key, out, err, errlen);
    if (r < 0) return -1;
    if (r == 0) {
        *out = def;
        return 0;
    }
    float f = (float)*out;
    if (!(*out > lo && *out < hi) || !isfinite(f) || !((double)f > lo && (double)f < hi))
        return phi3_fail(err, errlen, "metadata %s: must be a number in (%g, %g) (as float32), got %.6g", key, lo, hi,
                         *out);
    return 0;
}

static int rope_factors(const gguf_file *g, const char *name, int n, float **out, char *err, size_t errlen)
{
    const gguf_tensor *t = gguf_find(g, name);
    if (!t) return phi3_fail(err, errlen, "tensor %s: missing (the other LongRoPE factor tensor is present)", name);
    if (t->type != GGML_F32 || t->ndim != 1 || t->ne[0] != (uint64_t)n)
        return phi3_fail(err, errlen, "tensor %s: expected F32 [%d], got %s [%llu%s]", name, n, gguf_type_name(t->type),
                    (unsigned long long)t->ne[0], t->ndim > 1 ? ", ..." : "");
    *out = xmalloc((size_t)n * sizeof **out);
    memcpy(*out, t->data, (size_t)n * sizeof **out);
    for (int i = 0; i < n; i++)
        if (!((*out)[i] > 0) || !isfinite((*out)[i]))
            return phi3_fail(err, errlen, "tensor %s: element %d is not a positive number", name, i);
    return 0;
}

int model_gguf_config(const gguf_file *g, phi3_config *c, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    const char *arch;
    size_t alen;
    int r = gguf_get_str(g, "general.architecture", &arch, &alen, err, errlen);
    if (r < 0) return -1;
    if (r == 0) return phi3_fail(err, errlen, "metadata general.architecture: missing");
    if (alen != 4 || memcmp(arch, "phi3", 4))
        return phi3_fail(err, errlen, "unsupported architecture %.*s (need phi3)", (int)(alen < 64 ? alen : 64), arch);
    if (meta_int(g, "phi3.embedding_length", 2, 1 << 16, -1, &c->hidden, err, errlen) ||
        meta_int(g, "phi3.attention.head_count", 1, 1024, -1, &c->n_heads, err, errlen) ||
        meta_int(g, "phi3.attention.head_count_kv", 1, 1024, c->n_heads, &c->n_kv_heads, err, errlen) ||
        meta_int(g, "phi3.block_count", 1, 1024, -1, &c->n_layers, err, errlen) ||
        meta_int(g, "phi3.feed_forward_length", 1, 1 << 20, -1, &c->intermediate, err, errlen) ||
        meta_int(g, "phi3.context_length", 1, 1 << 24, -1, &c->max_pos, err, errlen) ||
        meta_int(g, "phi3.attention.sliding_window", 0, 1L << 30, 0, &c->sliding_window, err, errlen))
        return -1;
    if (c->hidden % c->n_heads || (c->hidden / c->n_heads) % 2)
        return phi3_fail(err, errlen, "phi3.embedding_length %d is not head_count %d x an even head size", c->hidden,
                    c->n_heads);
    c->head_dim = c->hidden / c->n_heads;
    if (c->n_heads % c->n_kv_heads)
        return phi3_fail(err, errlen, "phi3.attention.head_count %d is not a multiple of head_count_kv %d", c->n_heads,
                    c->n_kv_heads);
    int rot = 0;
    if (meta_int(g, "phi3.rope.dimension_count", 1, 1 << 16, c->head_dim, &rot, err, errlen)) return -1;
    if (rot != c->head_dim)
        return phi3_fail(err, errlen, "phi3.rope.dimension_count %d != head size %d (partial rotary is not supported)",
                    rot, c->head_dim);
    double eps;
    if (meta_num(g, "phi3.attention.layer_norm_rms_epsilon", 1e-5, 0, 1, &eps, err, errlen) ||
        meta_num(g, "phi3.rope.freq_base", 10000.0, 0, 1e30, &c->rope_theta, err, errlen))
        return -1;
    c->rms_eps = (float)eps;
    const gguf_tensor *emb = gguf_find(g, "token_embd.weight");
    if (!emb) return phi3_fail(err, errlen, "tensor token_embd.weight: missing");
    if (emb->ndim != 2 || emb->ne[1] < 1 || emb->ne[1] > (1u << 22))
        return phi3_fail(err, errlen, "tensor token_embd.weight: expected 2 dimensions with 1 to 4194304 rows");
    c->vocab = (int)emb->ne[1];
    c->tie_embeddings = gguf_find(g, "output.weight") == NULL;

    c->original_max_pos = c->max_pos;
    c->attn_factor = 1.0;
    int has_long = gguf_find(g, "rope_factors_long.weight") != NULL;
    int has_short = gguf_find(g, "rope_factors_short.weight") != NULL;
    c->rope_longrope = has_long || has_short;
    if (c->rope_longrope) {
        int half = c->head_dim / 2;
        if (rope_factors(g, "rope_factors_short.weight", half, &c->short_factor, err, errlen) ||
            rope_factors(g, "rope_factors_long.weight", half, &c->long_factor, err, errlen) ||
            meta_int(g, "phi3.rope.scaling.original_context_length", 1, 1 << 24, c->max_pos, &c->original_max_pos,
                     err, errlen))
            return -1;
        if (c->original_max_pos > c->max_pos)      /* as config.json (model.c) */
            return phi3_fail(err, errlen,
                             "phi3.rope.scaling.original_context_length %d exceeds phi3.context_length %d",
                             c->original_max_pos, c->max_pos);
        /* The same default as the config.json path; the file's attn_factor (a float32)
         * when given. */
        double scale = (double)c->max_pos / c->original_max_pos;
        if (scale > 1.0 && c->original_max_pos > 1)
            c->attn_factor = sqrt(1.0 + log(scale) / log((double)c->original_max_pos));
        double af;
        if (meta_num(g, "phi3.rope.scaling.attn_factor", c->attn_factor, 0, 100, &af, err, errlen)) return -1;
        if ((float)af != (float)c->attn_factor) c->attn_factor = af;
    }
    return 0;
}

typedef struct gloader {
    phi3_model *m;
    const gguf_file *g;
    char *err;
    size_t errlen;
} gloader;

/* Bind one weight: rows x cols (rows 0: a vector of cols). GGUF lists dimensions
 * innermost first, so a [rows, cols] matrix is ne = {cols, rows}. */
static int gbind(void *ctx, phi3_weight *w, const char *name, int64_t rows, int64_t cols)
{
    gloader *L = ctx;
    const gguf_tensor *t = gguf_find(L->g, name);
    if (!t) return phi3_fail(L->err, L->errlen, "tensor %s: missing", name);
    st_dtype d;
    if (model_gguf_dtype(t->type, &d))
        return phi3_fail(L->err, L->errlen, "tensor %s: type %s is not supported", name, gguf_type_name(t->type));
    int nd = rows ? 2 : 1;
    if (t->ndim != nd || t->ne[0] != (uint64_t)cols || (rows && t->ne[1] != (uint64_t)rows)) {
        char got[96];
        int o = snprintf(got, sizeof got, "[");
        for (int i = t->ndim - 1; i >= 0 && o < (int)sizeof got; i--)
            o += snprintf(got + o, sizeof got - (size_t)o, "%llu%s", (unsigned long long)t->ne[i], i ? ", " : "]");
        if (rows)
            return phi3_fail(L->err, L->errlen, "tensor %s: expected [%lld, %lld], got %s", name, (long long)rows,
                        (long long)cols, got);
        return phi3_fail(L->err, L->errlen, "tensor %s: expected [%lld], got %s", name, (long long)cols, got);
    }
    w->data = t->data;
    w->dtype = d;
    w->rows = rows ? rows : 1;
    w->cols = cols;
    L->m->weight_bytes += t->nbytes;
    uint64_t h = L->m->fingerprint;
    h = model_fnv(h, name, strlen(name) + 1);
    h = model_fnv(h, &t->type, sizeof t->type);
    h = model_fnv(h, t->ne, sizeof t->ne);
    size_t s = t->nbytes < 64 ? (size_t)t->nbytes : 64;
    h = model_fnv(h, t->data, s);
    h = model_fnv(h, (const uint8_t *)t->data + t->nbytes - s, s);
    L->m->fingerprint = h;
    return 0;
}

/* llama.cpp's names. It keeps Phi-3's fused tensors: attn_qkv (Q, K, V rows) and ffn_up
 * holding gate_up_proj (gate rows, then up rows). */
static const model_names gguf_names = {
    .embed = "token_embd.weight", .norm = "output_norm.weight", .lm_head = "output.weight", .layer = "blk.",
    .ln1 = "attn_norm.weight", .qkv = "attn_qkv.weight", .o = "attn_output.weight", .ln2 = "ffn_norm.weight",
    .gate_up = "ffn_up.weight", .down = "ffn_down.weight",
};

phi3_model *model_load_gguf(const char *path, char *err, size_t errlen)
{
    phi3_model *m = xcalloc(1, sizeof *m);
    m->dir = xstrdup(path);
    m->gguf = xcalloc(1, sizeof *m->gguf);
    char why[512];
    int rc = gguf_open(path, m->gguf, err, errlen);
    if (!rc && model_gguf_config(m->gguf, &m->cfg, why, sizeof why)) rc = phi3_fail(err, errlen, "%s: %s", path, why);
    if (!rc) {
        m->file_bytes = m->gguf->size;
        /* A GGUF model never shares a fingerprint with a directory model: the tag, the
         * file size and the tensor names (llama.cpp's) all differ. */
        char tag[32];
        snprintf(tag, sizeof tag, "gguf %zu ", m->gguf->size);
        m->fingerprint = model_config_hash(&m->cfg, tag);
        gloader L = {.m = m, .g = m->gguf, .err = why, .errlen = sizeof why};
        if (model_bind_all(m, &gguf_names, gbind, &L)) rc = phi3_fail(err, errlen, "%s: %s", path, why);
    }
    if (!rc) {
        /* Every byte of the file, as the directory path hashes its shards (cached by the
         * file's identity: fingerprint.c). */
        st_file whole = {.path = m->gguf->path, .map = (void *)m->gguf->map, .size = m->gguf->size,
                         .id = m->gguf->id};
        uint64_t h = st_file_hash(&whole, NULL);
        m->fingerprint = model_fnv(m->fingerprint, &h, sizeof h);
    }
    if (rc) {
        model_free(m);
        return NULL;
    }
    snprintf(m->fingerprint_hex, sizeof m->fingerprint_hex, "%016llx", (unsigned long long)m->fingerprint);
    return m;
}
