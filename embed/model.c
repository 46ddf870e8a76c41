/* model.c: load a Hugging Face Phi-3 directory: config.json, the safetensors shard(s),
 * every weight bound with the dtype and shape the forward pass expects, a fingerprint. */
#include "embed/model.h"
#include "embed/gguf.h"
#include "embed/jscan.h"
#include "embed/quant.h"
#include "shared/util.h"
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* config.json: Phi-3-mini's is 3.5 KB. It is parsed into a jansson tree, which costs up
 * to ~45x the text for arrays of tiny values: 1 MiB keeps that under ~50 MB. */
#define CONFIG_MAX (1u << 20)
/* model.safetensors.index.json: Phi-3-mini's is 30 KB (one line per tensor); 16 MiB
 * holds ~200,000 tensor names, far beyond any checkpoint we load. */
#define INDEX_MAX (16u << 20)

/* Read a small file of the model directory whole: opened O_NONBLOCK (a FIFO named
 * config.json must not hang the load), regular files only, at most max bytes. NULL with
 * "PATH: cause" in err. */
static char *read_regular(const char *path, size_t max, size_t *len, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        phi3_fail(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    char *buf = NULL;
    if (fstat(fd, &st)) phi3_fail(err, errlen, "%s: %s", path, strerror(errno));
    else if (!S_ISREG(st.st_mode)) phi3_fail(err, errlen, "%s: not a regular file", path);
    else if ((uint64_t)st.st_size > max)
        phi3_fail(err, errlen, "%s: %lld bytes is more than the %zu MiB this loader reads", path, (long long)st.st_size,
             max >> 20);
    else {
        size_t n = (size_t)st.st_size, got = 0;
        ssize_t r = 1;
        buf = xmalloc(n + 1);
        while (got < n && r != 0) {
            r = read(fd, buf + got, n - got);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) break;
            got += (size_t)r;
        }
        if (got != n) {
            phi3_fail(err, errlen, "%s: %s", path, r < 0 ? strerror(errno) : "shorter than its size (changed while read)");
            free(buf);
            buf = NULL;
        } else {
            buf[n] = 0;
            *len = n;
        }
    }
    close(fd);
    return buf;
}

/* ---- config.json ---- */

/* Integer key in [lo, hi]; absent: def (or an error if def < lo). */
static int cfg_int(json_t *o, const char *key, long lo, long hi, long def, int *out,
                   char *err, size_t errlen)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (def < lo) return phi3_fail(err, errlen, "config.json: missing %s", key);
        *out = (int)def;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return phi3_fail(err, errlen, "config.json: %s must be an integer in [%ld, %ld]", key, lo, hi);
    *out = (int)json_integer_value(v);
    return 0;
}

/* A number in the open interval (lo, hi), also after rounding to float32 (the forward
 * pass keeps eps, factors and the attention factor as float32: 1e300 would be inf there,
 * 1e-50 zero); absent: def. */
static int cfg_num(json_t *o, const char *key, double def, double lo, double hi, double *out, char *err,
                   size_t errlen)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    double x = json_is_number(v) ? json_number_value(v) : NAN;
    float f = (float)x;
    if (!(x > lo && x < hi) || !isfinite(f) || !((double)f > lo && (double)f < hi))
        return phi3_fail(err, errlen, "config.json: %s must be a number in (%g, %g) (as float32), got %.6g", key, lo, hi,
                    x);
    *out = x;
    return 0;
}

/* LongRoPE factors: float32 in transformers too. */
#define FACTOR_MAX 1e6

static int cfg_factors(json_t *rs, const char *key, int n, float **out, char *err, size_t errlen)
{
    json_t *a = json_object_get(rs, key);
    if (!json_is_array(a) || json_array_size(a) != (size_t)n)
        return phi3_fail(err, errlen, "config.json: rope_scaling.%s must be an array of head_dim/2 = %d numbers",
                    key, n);
    *out = xmalloc((size_t)n * sizeof **out);
    for (int i = 0; i < n; i++) {
        json_t *e = json_array_get(a, (size_t)i);
        double x = json_is_number(e) ? json_number_value(e) : -1;
        float f = (float)x;   /* transformers holds the factors as float32 */
        if (!(x > 0 && x < FACTOR_MAX) || !(f > 0))
            return phi3_fail(err, errlen, "config.json: rope_scaling.%s[%d] must be a number in (0, %g) (as float32)",
                        key, i, FACTOR_MAX);
        (*out)[i] = f;
    }
    return 0;
}

void model_config_free(phi3_config *c)
{
    free(c->short_factor);
    free(c->long_factor);
    c->short_factor = c->long_factor = NULL;
}

static int config_from_json(json_t *o, phi3_config *c, char *err, size_t errlen)
{
    if (!json_is_object(o)) return phi3_fail(err, errlen, "config.json: not a JSON object");
    json_t *arch = json_object_get(o, "architectures");
    int ok = 0;
    for (size_t i = 0; json_is_array(arch) && i < json_array_size(arch); i++)
        if (json_is_string(json_array_get(arch, i)) &&
            !strcmp(json_string_value(json_array_get(arch, i)), "Phi3ForCausalLM")) ok = 1;
    if (!ok) {
        json_t *a0 = json_is_array(arch) ? json_array_get(arch, 0) : arch;
        return phi3_fail(err, errlen, "config.json: unsupported architecture %.64s (need Phi3ForCausalLM)",
                    json_is_string(a0) ? json_string_value(a0) : "(none given)");
    }
    if (cfg_int(o, "hidden_size", 2, 1 << 16, -1, &c->hidden, err, errlen) ||
        cfg_int(o, "num_attention_heads", 1, 1024, -1, &c->n_heads, err, errlen) ||
        cfg_int(o, "num_key_value_heads", 1, 1024, c->n_heads, &c->n_kv_heads, err, errlen) ||
        cfg_int(o, "num_hidden_layers", 1, 1024, -1, &c->n_layers, err, errlen) ||
        cfg_int(o, "intermediate_size", 1, 1 << 20, -1, &c->intermediate, err, errlen) ||
        cfg_int(o, "vocab_size", 1, 1 << 22, -1, &c->vocab, err, errlen) ||
        cfg_int(o, "max_position_embeddings", 1, 1 << 24, -1, &c->max_pos, err, errlen) ||
        cfg_int(o, "sliding_window", 0, 1L << 30, 0, &c->sliding_window, err, errlen))
        return -1;
    if (c->hidden % c->n_heads || (c->hidden / c->n_heads) % 2)
        return phi3_fail(err, errlen, "config.json: hidden_size %d is not num_attention_heads %d x an even head_dim",
                    c->hidden, c->n_heads);
    c->head_dim = c->hidden / c->n_heads;
    int hd;
    if (cfg_int(o, "head_dim", 1, 1 << 16, c->head_dim, &hd, err, errlen)) return -1;
    if (hd != c->head_dim)
        return phi3_fail(err, errlen, "config.json: head_dim %d != hidden_size / num_attention_heads %d", hd,
                    c->head_dim);
    if (c->n_heads % c->n_kv_heads)
        return phi3_fail(err, errlen, "config.json: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                    c->n_heads, c->n_kv_heads);
    double eps, prf;
    if (cfg_num(o, "rms_norm_eps", 1e-5, 0, 1, &eps, err, errlen) ||
        cfg_num(o, "partial_rotary_factor", 1.0, 0, 2, &prf, err, errlen))
        return -1;
    c->rms_eps = (float)eps;
    if (prf != 1.0) return phi3_fail(err, errlen, "config.json: partial_rotary_factor %g is not supported", prf);
    json_t *tie = json_object_get(o, "tie_word_embeddings");
    if (tie && !json_is_boolean(tie) && !json_is_null(tie))
        return phi3_fail(err, errlen, "config.json: tie_word_embeddings must be true or false");
    c->tie_embeddings = json_is_true(tie);

    /* rope_scaling (transformers 5 may write rope_parameters instead, with rope_theta in it). */
    json_t *rs = json_object_get(o, "rope_scaling");
    if (!rs || json_is_null(rs)) rs = json_object_get(o, "rope_parameters");
    if (rs && !json_is_null(rs) && !json_is_object(rs))
        return phi3_fail(err, errlen, "config.json: rope_scaling must be an object or null");
    if (cfg_num(o, "rope_theta", 10000.0, 0, 1e30, &c->rope_theta, err, errlen) ||
        (rs && json_object_get(rs, "rope_theta") &&
         cfg_num(rs, "rope_theta", 10000.0, 0, 1e30, &c->rope_theta, err, errlen)))
        return -1;
    const char *type = NULL;
    if (rs && !json_is_null(rs)) {
        json_t *t = json_object_get(rs, "type");
        if (!json_is_string(t)) t = json_object_get(rs, "rope_type");
        if (!json_is_string(t)) return phi3_fail(err, errlen, "config.json: rope_scaling has no type");
        type = json_string_value(t);
        if (!strcmp(type, "default")) type = NULL;
        else if (strcmp(type, "longrope") && strcmp(type, "su"))
            return phi3_fail(err, errlen, "config.json: unsupported rope_scaling type %.32s", type);
    }
    c->rope_longrope = type != NULL;
    c->original_max_pos = c->max_pos;
    c->attn_factor = 1.0;
    if (c->rope_longrope) {
        int half = c->head_dim / 2;
        if (cfg_factors(rs, "short_factor", half, &c->short_factor, err, errlen) ||
            cfg_factors(rs, "long_factor", half, &c->long_factor, err, errlen))
            return -1;
        if (cfg_int(o, "original_max_position_embeddings", 1, 1 << 24, c->max_pos, &c->original_max_pos,
                    err, errlen) ||
            cfg_int(rs, "original_max_position_embeddings", 1, 1 << 24, c->original_max_pos,
                    &c->original_max_pos, err, errlen))
            return -1;
        if (c->original_max_pos > c->max_pos)
            return phi3_fail(err, errlen,
                        "config.json: original_max_position_embeddings %d exceeds max_position_embeddings %d",
                        c->original_max_pos, c->max_pos);
        /* transformers' longrope default: scale = max/original_max, factor 1 when scale <= 1. */
        double scale = (double)c->max_pos / c->original_max_pos;
        if (scale > 1.0 && c->original_max_pos > 1)
            c->attn_factor = sqrt(1.0 + log(scale) / log((double)c->original_max_pos));
        /* cos and sin are scaled by it: past ~100 the attention is saturated nonsense. */
        if (cfg_num(rs, "attention_factor", c->attn_factor, 0, 100, &c->attn_factor, err, errlen)) return -1;
    }
    return 0;
}

int model_config_parse(const char *text, size_t len, phi3_config *c, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    json_error_t je;
    json_t *o = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!o) return phi3_fail(err, errlen, "config.json: invalid JSON: %s (line %d)", je.text, je.line);
    int rc = config_from_json(o, c, err, errlen);
    json_decref(o);
    if (rc) model_config_free(c);
    return rc;
}

/* ---- conversions ---- */

float bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, u;
    if (e == 0x1f) u = sign | 0x7f800000u | m << 13;            /* inf, nan */
    else if (e) u = sign | (e + 112) << 23 | m << 13;            /* normal */
    else if (!m) u = sign;                                       /* zero */
    else {                                                       /* subnormal: m * 2^-24 */
        float f = (float)m * 0x1p-24f;
        memcpy(&u, &f, 4);
        u |= sign;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

void model_to_f32(st_dtype d, const void *src, float *dst, size_t n)
{
    const uint16_t *h = src;
    if (d == ST_F32) memcpy(dst, src, n * 4);
    else if (d == ST_BF16)
        for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(h[i]);
    else
        for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32(h[i]);
}

/* ---- the directory ---- */

/* The index's weight_map: tensor name -> shard, sorted by name (parsed with jscan: no
 * JSON tree, so a 16 MiB index costs about its own size, not 17x). */
typedef struct wentry {
    const char *name;
    int shard;           /* into m->shards */
} wentry;

typedef struct wmap {
    wentry *e;           /* the names follow the entries in the same allocation */
    size_t n;
} wmap;

typedef struct loader {
    phi3_model *m;
    wmap *wmap;          /* index weight_map, or NULL for a single file */
    char *err;
    size_t errlen;
} loader;

static int cmp_wentry(const void *a, const void *b)
{
    return strcmp(((const wentry *)a)->name, ((const wentry *)b)->name);
}

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static const st_tensor *find_tensor(const phi3_model *m, const wmap *wm, const char *name,
                                    char *err, size_t errlen)
{
    if (wm) {
        wentry key = {.name = name};
        const wentry *w = wm->n ? bsearch(&key, wm->e, wm->n, sizeof key, cmp_wentry) : NULL;
        if (!w) {
            phi3_fail(err, errlen, "tensor %s: missing (not in model.safetensors.index.json)", name);
            return NULL;
        }
        const st_file *f = &m->shards[w->shard];
        const st_tensor *t = st_find(f, name);
        if (!t) phi3_fail(err, errlen, "tensor %s: missing from %s", name, strrchr(f->path, '/') + 1);
        return t;
    }
    for (int i = 0; i < m->n_shards; i++) {
        const st_tensor *t = st_find(&m->shards[i], name);
        if (t) return t;
    }
    phi3_fail(err, errlen, "tensor %s: missing", name);
    return NULL;
}

const st_tensor *model_fetch(const phi3_model *m, const char *name, unsigned dtype_mask, int ndim,
                             const int64_t *shape, char *err, size_t errlen)
{
    char why[256];
    const st_tensor *t = find_tensor(m, NULL, name, why, sizeof why);
    if (!t) {
        phi3_fail(err, errlen, "%s", why);
        return NULL;
    }
    return st_check(t, name, dtype_mask, ndim, shape, err, errlen);
}

uint64_t model_fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

uint64_t model_config_hash(const phi3_config *c, const char *tag)
{
    /* The config values that change the computation. */
    char s[320];
    int n = snprintf(s, sizeof s, "%s%d %d %d %d %d %d %d %.9g %.17g %d %.17g %d %d %d %d", tag, c->hidden,
                     c->n_heads, c->n_kv_heads, c->head_dim, c->n_layers, c->intermediate, c->vocab,
                     (double)c->rms_eps, c->rope_theta, c->rope_longrope, c->attn_factor, c->original_max_pos,
                     c->max_pos, c->sliding_window, c->tie_embeddings);
    uint64_t h = model_fnv(0xcbf29ce484222325ull, s, n < (int)sizeof s ? (size_t)n : sizeof s - 1);
    if (c->rope_longrope) {
        h = model_fnv(h, c->short_factor, (size_t)c->head_dim / 2 * sizeof(float));
        h = model_fnv(h, c->long_factor, (size_t)c->head_dim / 2 * sizeof(float));
    }
    return h;
}

int model_bind_all(phi3_model *m, const model_names *nm, model_bind_fn bind, void *ctx)
{
    const phi3_config *c = &m->cfg;
    int64_t H = c->hidden, V = c->vocab, I = c->intermediate;
    int64_t qkv = (int64_t)(c->n_heads + 2 * c->n_kv_heads) * c->head_dim;
    char name[160];
    if (bind(ctx, &m->embed, nm->embed, V, H)) return -1;
    m->layers = xcalloc((size_t)c->n_layers, sizeof *m->layers);
    for (int l = 0; l < c->n_layers; l++) {
        phi3_layer *y = &m->layers[l];
#define B(field, r, k) (snprintf(name, sizeof name, "%s%d.%s", nm->layer, l, nm->field), bind(ctx, &y->field, name, r, k))
        if (B(ln1, 0, H) || B(qkv, qkv, H) || B(o, H, (int64_t)c->n_heads * c->head_dim) || B(ln2, 0, H) ||
            B(gate_up, 2 * I, H) || B(down, H, I))
            return -1;
#undef B
    }
    if (bind(ctx, &m->norm, nm->norm, 0, H)) return -1;
    if (c->tie_embeddings) m->lm_head = m->embed;
    else if (bind(ctx, &m->lm_head, nm->lm_head, V, H)) return -1;
    return 0;
}

/* Bind one weight: rows x cols (rows 0: a vector of cols). */
static int bind(void *ctx, phi3_weight *w, const char *name, int64_t rows, int64_t cols)
{
    loader *L = ctx;
    int64_t shape[2] = {rows, cols};
    int nd = rows ? 2 : 1;
    const st_tensor *t = find_tensor(L->m, L->wmap, name, L->err, L->errlen);
    if (!t || !st_check(t, name, ST_FLOAT_WEIGHTS, nd, rows ? shape : shape + 1, L->err, L->errlen))
        return -1;
    w->data = t->data;
    w->dtype = t->dtype;
    w->rows = rows ? rows : 1;
    w->cols = cols;
    L->m->weight_bytes += t->nbytes;
    /* Fingerprint: name, dtype, shape and the shard it comes from; the bytes of every
     * shard are hashed whole after binding (hash_shards). */
    uint64_t h = L->m->fingerprint;
    h = model_fnv(h, name, strlen(name) + 1);
    h = model_fnv(h, &t->dtype, sizeof t->dtype);
    h = model_fnv(h, shape, sizeof shape);
    for (int i = 0; i < L->m->n_shards; i++) {
        const st_file *f = &L->m->shards[i];
        if ((const uint8_t *)t->data >= (const uint8_t *)f->map &&
            (const uint8_t *)t->data < (const uint8_t *)f->map + f->size) {
            h = model_fnv(h, &i, sizeof i);
            h = model_fnv(h, &t->offset, sizeof t->offset);
        }
    }
    L->m->fingerprint = h;
    return 0;
}

/* Hugging Face's names. */
static const model_names hf_names = {
    .embed = "model.embed_tokens.weight", .norm = "model.norm.weight", .lm_head = "lm_head.weight",
    .layer = "model.layers.", .ln1 = "input_layernorm.weight", .qkv = "self_attn.qkv_proj.weight",
    .o = "self_attn.o_proj.weight", .ln2 = "post_attention_layernorm.weight", .gate_up = "mlp.gate_up_proj.weight",
    .down = "mlp.down_proj.weight",
};

/* Open one shard of the index (each once); its index in m->shards, or -1. */
static int shard_of(loader *L, const char *ip, const char *f, const char *key)
{
    phi3_model *m = L->m;
    if (!*f || strchr(f, '/') || f[0] == '.') {
        phi3_fail(L->err, L->errlen, "%s: bad shard name for %s", ip, key);
        return -1;
    }
    for (int i = m->n_shards - 1; i >= 0; i--)
        if (!strcmp(strrchr(m->shards[i].path, '/') + 1, f)) return i;
    if (m->n_shards >= 4096) {
        phi3_fail(L->err, L->errlen, "%s: too many shards", ip);
        return -1;
    }
    m->shards = xrealloc(m->shards, (size_t)(m->n_shards + 1) * sizeof *m->shards);
    char *sp = path_join(m->dir, f);
    int rc = st_open(sp, &m->shards[m->n_shards], L->err, L->errlen);
    free(sp);
    if (rc) return -1;
    m->file_bytes += m->shards[m->n_shards].size;
    return m->n_shards++;
}

/* Parse the index text: {"weight_map": {name: shard file, ...}, other members skipped}.
 * Two passes: the first checks the syntax and sizes the table. */
static int parse_index(loader *L, const char *ip, const char *text, size_t len)
{
    jscan j;
    size_t members = 0, key_bytes = 0;
    int found = 0, r;
    js_init(&j, text, len);
    if (js_lit(&j, '{')) goto syntax;
    for (r = js_peek(&j) == '}' ? (j.p++, 0) : 1; r == 1; r = js_next(&j, '}')) {
        char key[16] = "";
        size_t raw;
        jscan probe = j;
        if (js_string(&probe, NULL, NULL, &raw)) { j = probe; goto syntax; }
        if (raw < sizeof key) js_string(&j, key, NULL, NULL);
        else j = probe;
        if (js_lit(&j, ':')) goto syntax;
        if (strcmp(key, "weight_map") || js_peek(&j) != '{') {
            if (js_skip(&j)) goto syntax;
            continue;
        }
        if (found++) return phi3_fail(L->err, L->errlen, "%s: invalid JSON: duplicate key weight_map", ip);
        j.p++;
        for (int q = js_peek(&j) == '}' ? (j.p++, 0) : 1; q == 1; q = js_next(&j, '}')) {
            if (js_string(&j, NULL, NULL, &raw) || js_lit(&j, ':') || js_skip(&j)) goto syntax;
            members++;
            key_bytes += raw + 1;
        }
        if (j.why[0]) goto syntax;
    }
    if (r < 0 || js_end(&j)) goto syntax;
    if (!found) return phi3_fail(L->err, L->errlen, "%s: no weight_map object", ip);

    wmap *w = xcalloc(1, sizeof *w);
    w->e = xmalloc(members * sizeof *w->e + key_bytes + 1);
    L->wmap = w;
    char *names = (char *)(w->e + members), val[256];
    js_init(&j, text, len);
    js_lit(&j, '{');
    for (r = js_peek(&j) == '}' ? (j.p++, 0) : 1; r == 1; r = js_next(&j, '}')) {
        char key[16] = "";
        size_t raw;
        jscan probe = j;
        js_string(&probe, NULL, NULL, &raw);
        if (raw < sizeof key) js_string(&j, key, NULL, NULL);
        else j = probe;
        js_lit(&j, ':');
        if (strcmp(key, "weight_map") || js_peek(&j) != '{') {
            js_skip(&j);
            continue;
        }
        j.p++;
        for (int q = js_peek(&j) == '}' ? (j.p++, 0) : 1; q == 1; q = js_next(&j, '}')) {
            size_t nl;
            js_string(&j, names, &nl, NULL);
            js_lit(&j, ':');
            const char *name = names;
            names += nl + 1;
            probe = j;
            if (js_peek(&j) != '"' || (js_string(&probe, NULL, NULL, &raw), raw >= sizeof val))
                return phi3_fail(L->err, L->errlen, "%s: bad shard name for %s", ip, name);
            js_string(&j, val, NULL, NULL);
            int sh = shard_of(L, ip, val, name);
            if (sh < 0) return -1;
            w->e[w->n++] = (wentry){name, sh};
        }
    }
    qsort(w->e, w->n, sizeof *w->e, cmp_wentry);
    for (size_t i = 1; i < w->n; i++)
        if (!strcmp(w->e[i].name, w->e[i - 1].name))
            return phi3_fail(L->err, L->errlen, "%s: invalid JSON: duplicate key %s", ip, w->e[i].name);
    return 0;
syntax:
    return phi3_fail(L->err, L->errlen, "%s: invalid JSON: %s (offset %zu)", ip, j.why, js_offset(&j));
}

/* Open the shards named by the index (each once), or model.safetensors. */
static int open_shards(loader *L)
{
    phi3_model *m = L->m;
    char *ip = path_join(m->dir, "model.safetensors.index.json");
    int rc = 0;
    if (access(ip, F_OK) == 0) {
        size_t len;
        char *text = read_regular(ip, INDEX_MAX, &len, L->err, L->errlen);
        rc = text ? parse_index(L, ip, text, len) : -1;
        free(text);
    } else {
        char *sp = path_join(m->dir, "model.safetensors");
        m->shards = xcalloc(1, sizeof *m->shards);
        rc = st_open(sp, &m->shards[0], L->err, L->errlen);
        if (!rc) {
            m->n_shards = 1;
            m->file_bytes = m->shards[0].size;
        }
        free(sp);
    }
    free(ip);
    return rc;
}

phi3_model *model_load(const char *dir, char *err, size_t errlen)
{
    if (gguf_is_path(dir)) return model_load_gguf(dir, err, errlen);
    phi3_model *m = xcalloc(1, sizeof *m);
    m->dir = xstrdup(dir);
    loader L = {.m = m, .err = err, .errlen = errlen};
    char *cp = path_join(dir, "config.json");
    size_t len;
    char *text = read_regular(cp, CONFIG_MAX, &len, err, errlen);
    int rc;
    if (!text) rc = -1;
    else {
        char why[256];
        rc = model_config_parse(text, len, &m->cfg, why, sizeof why);
        if (rc) phi3_fail(err, errlen, "%s/%s", dir, why);
    }
    free(text);
    free(cp);
    if (!rc) {
        m->fingerprint = model_config_hash(&m->cfg, "");
        rc = open_shards(&L);
    }
    if (!rc) rc = model_bind_all(m, &hf_names, bind, &L);
    if (!rc) {
        /* Every byte of every shard (cached by file identity: fingerprint.c). */
        for (int i = 0; i < m->n_shards; i++) {
            uint64_t h = st_file_hash(&m->shards[i], NULL);
            m->fingerprint = model_fnv(m->fingerprint, &h, sizeof h);
        }
    }
    if (L.wmap) free(L.wmap->e);
    free(L.wmap);
    if (rc) {
        model_free(m);
        return NULL;
    }
    snprintf(m->fingerprint_hex, sizeof m->fingerprint_hex, "%016llx", (unsigned long long)m->fingerprint);
    return m;
}

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22           /* Linux 5.14 */
#endif
/* [a, b) of a mapping, rounded outward to pages, but for the pages wholly inside the
 * table of embeddings [xa, xb) (read a row per token, never whole) */
static void populate_range(const uint8_t *a, const uint8_t *b, const uint8_t *xa, const uint8_t *xb)
{
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = (uintptr_t)a & ~(pg - 1), hi = (uintptr_t)b;
    uintptr_t x0 = ((uintptr_t)xa + pg - 1) & ~(pg - 1), x1 = (uintptr_t)xb & ~(pg - 1);
    if (xa && x0 < x1 && x0 >= lo && x1 <= hi) {
        if (x0 > lo) (void)madvise((void *)lo, x0 - lo, MADV_POPULATE_READ);
        if (hi > x1) (void)madvise((void *)x1, hi - x1, MADV_POPULATE_READ);
    } else (void)madvise((void *)lo, hi - lo, MADV_POPULATE_READ);
}

void model_populate(const phi3_model *m)
{
    /* Older kernels answer EINVAL: the pages are then mapped at first use, as before. A
     * file truncated meanwhile answers EFAULT here (no SIGBUS); the guard catches it later.
     * The embedding table is left out unless it is also the LM head (tied). */
    const uint8_t *xa = NULL, *xb = NULL;
    if (m->embed.data && m->embed.data != m->lm_head.data) {
        xa = m->embed.data;
        xb = xa + quant_row_bytes(m->embed.dtype, m->embed.cols) * (size_t)m->embed.rows;
    }
    for (int i = 0; i < m->n_shards; i++)
        if (m->shards[i].map)
            populate_range(m->shards[i].map, (const uint8_t *)m->shards[i].map + m->shards[i].size, xa, xb);
    if (m->gguf && m->gguf->mapped) populate_range(m->gguf->map, m->gguf->map + m->gguf->size, xa, xb);
}

void model_free(phi3_model *m)
{
    if (!m) return;
    for (int i = 0; i < m->n_shards; i++) st_close(&m->shards[i]);
    free(m->shards);
    if (m->gguf) gguf_close(m->gguf);
    free(m->gguf);
    free(m->layers);
    model_config_free(&m->cfg);
    free(m->dir);
    free(m);
}
