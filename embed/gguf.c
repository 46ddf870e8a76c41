/* gguf.c: read and write GGUF files. The reader walks the header, the metadata and the
 * tensor infos with a bounds-checked cursor, checks every size against the file before
 * any allocation, and points tensors into the read-only mapping. */
#include "embed/gguf.h"
#include "embed/model.h"
#include "shared/util.h"
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_KEY_MAX 65535u          /* the spec's limit on a key */
#define GGUF_NAME_MAX 1024u          /* tensor names (ggml: 63); generous, still bounded */
#define GGUF_ARR_DEPTH 4             /* arrays of arrays nest at most this deep */
#define GGUF_KV_MAX (1u << 16)       /* metadata pairs (real files: tens) */
#define GGUF_T_MAX (1u << 20)        /* tensors (real files: hundreds) */

static const struct { const char *name; uint32_t block, size; } ttypes[] = {
    [GGML_F32] = {"F32", 1, 4},       [GGML_F16] = {"F16", 1, 2},
    [GGML_Q4_0] = {"Q4_0", 32, 18},   [GGML_Q4_1] = {"Q4_1", 32, 20},
    [4] = {"Q4_2", 0, 0},             [5] = {"Q4_3", 0, 0},
    [GGML_Q5_0] = {"Q5_0", 32, 22},   [GGML_Q5_1] = {"Q5_1", 32, 24},
    [GGML_Q8_0] = {"Q8_0", 32, 34},   [GGML_Q8_1] = {"Q8_1", 32, 36},
    [GGML_Q2_K] = {"Q2_K", 256, 84},  [GGML_Q3_K] = {"Q3_K", 256, 110},
    [GGML_Q4_K] = {"Q4_K", 256, 144}, [GGML_Q5_K] = {"Q5_K", 256, 176},
    [GGML_Q6_K] = {"Q6_K", 256, 210}, [GGML_Q8_K] = {"Q8_K", 256, 292},
    [16] = {"IQ2_XXS", 0, 0},         [17] = {"IQ2_XS", 0, 0},
    [18] = {"IQ3_XXS", 0, 0},         [19] = {"IQ1_S", 0, 0},
    [20] = {"IQ4_NL", 0, 0},          [21] = {"IQ3_S", 0, 0},
    [22] = {"IQ2_S", 0, 0},           [23] = {"IQ4_XS", 0, 0},
    [GGML_I8] = {"I8", 1, 1},         [GGML_I16] = {"I16", 1, 2},
    [GGML_I32] = {"I32", 1, 4},       [GGML_I64] = {"I64", 1, 8},
    [GGML_F64] = {"F64", 1, 8},       [29] = {"IQ1_M", 0, 0},
    [GGML_BF16] = {"BF16", 1, 2},     [34] = {"TQ1_0", 0, 0},
    [35] = {"TQ2_0", 0, 0},           [39] = {"MXFP4", 0, 0},
};
#define NTTYPES (sizeof ttypes / sizeof ttypes[0])

const char *gguf_type_name(uint32_t type)
{
    static _Thread_local char buf[4][24];
    static _Thread_local int k;
    if (type < NTTYPES && ttypes[type].name) return ttypes[type].name;
    k = (k + 1) & 3;
    snprintf(buf[k], sizeof buf[k], "type %u", type);
    return buf[k];
}

uint32_t gguf_type_block(uint32_t type) { return type < NTTYPES ? ttypes[type].block : 0; }
uint32_t gguf_type_size(uint32_t type) { return type < NTTYPES ? ttypes[type].size : 0; }

uint64_t gguf_row_bytes(uint32_t type, uint64_t n)
{
    uint32_t b = gguf_type_block(type);
    if (!b || n % b) return 0;
    return n / b * gguf_type_size(type);
}

/* ---- reader ---- */

typedef struct cur {
    const uint8_t *p;
    size_t size, pos;
    char *err;
    size_t errlen;
} cur;

static int need(cur *c, uint64_t n, const char *what)
{
    if (n > c->size - c->pos)
        return phi3_fail(c->err, c->errlen, "truncated at byte %zu: %s needs %llu bytes, %zu left", c->pos,
                    what, (unsigned long long)n, c->size - c->pos);
    return 0;
}

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static int rd(cur *c, int n, uint64_t *v, const char *what)
{
    if (need(c, (uint64_t)n, what)) return -1;
    *v = le(c->p + c->pos, n);
    c->pos += (size_t)n;
    return 0;
}

/* A string: u64 length + bytes. Sets *s (into the buffer) and *len. */
static int rd_str(cur *c, uint64_t max, const uint8_t **s, uint64_t *len, const char *what)
{
    if (rd(c, 8, len, what)) return -1;
    if (*len > max)
        return phi3_fail(c->err, c->errlen, "%s: length %llu exceeds %llu", what, (unsigned long long)*len,
                    (unsigned long long)max);
    if (need(c, *len, what)) return -1;
    *s = c->p + c->pos;
    c->pos += (size_t)*len;
    return 0;
}

static const uint32_t vsize[GGUF_NVTYPE] = {
    [GGUF_U8] = 1, [GGUF_I8] = 1, [GGUF_U16] = 2, [GGUF_I16] = 2, [GGUF_U32] = 4, [GGUF_I32] = 4,
    [GGUF_F32] = 4, [GGUF_BOOL] = 1, [GGUF_U64] = 8, [GGUF_I64] = 8, [GGUF_F64] = 8,
};

/* Skip (validating) one value of type t; string-array offsets go to *offs when given. */
static int skip_value(cur *c, uint32_t t, int depth, const char *key, uint64_t **offs, uint64_t *n_out)
{
    if (t >= GGUF_NVTYPE) return phi3_fail(c->err, c->errlen, "key %.64s: unknown value type %u", key, t);
    if (t == GGUF_STR) {
        const uint8_t *s;
        uint64_t len;
        return rd_str(c, c->size, &s, &len, key);
    }
    if (t != GGUF_ARR) {
        if (need(c, vsize[t], key)) return -1;
        if (t == GGUF_BOOL && c->p[c->pos] > 1)
            return phi3_fail(c->err, c->errlen, "key %.64s: bool value %u", key, c->p[c->pos]);
        c->pos += vsize[t];
        return 0;
    }
    if (depth >= GGUF_ARR_DEPTH)
        return phi3_fail(c->err, c->errlen, "key %.64s: arrays nested deeper than %d", key, GGUF_ARR_DEPTH);
    uint64_t at, n;
    if (rd(c, 4, &at, key) || rd(c, 8, &n, key)) return -1;
    if (at >= GGUF_NVTYPE) return phi3_fail(c->err, c->errlen, "key %.64s: unknown array element type %llu", key,
                                       (unsigned long long)at);
    if (n_out) *n_out = n;
    if (at != GGUF_STR && at != GGUF_ARR) {
        uint64_t bytes;
        if (__builtin_mul_overflow(n, (uint64_t)vsize[at], &bytes))
            return phi3_fail(c->err, c->errlen, "key %.64s: array of %llu elements too long", key, (unsigned long long)n);
        if (need(c, bytes, key)) return -1;
        if (at == GGUF_BOOL)
            for (uint64_t i = 0; i < n; i++)
                if (c->p[c->pos + i] > 1) return phi3_fail(c->err, c->errlen, "key %.64s: bool value %u", key, c->p[c->pos + i]);
        c->pos += (size_t)bytes;
        return 0;
    }
    /* Each string or nested array takes at least 8 (12) bytes: bounds n before allocating. */
    uint64_t min = at == GGUF_STR ? 8 : 12;
    if (n > (c->size - c->pos) / min)
        return phi3_fail(c->err, c->errlen, "key %.64s: array of %llu elements exceeds the file", key,
                    (unsigned long long)n);
    size_t base = c->pos;
    uint64_t *o = NULL;
    if (offs && at == GGUF_STR) o = xmalloc((n ? n : 1) * sizeof *o);
    for (uint64_t i = 0; i < n; i++) {
        if (o) o[i] = c->pos - base;
        if (skip_value(c, (uint32_t)at, depth + 1, key, NULL, NULL)) {
            free(o);
            return -1;
        }
    }
    if (offs) *offs = o;
    return 0;
}

static int cmp_tensor_idx(const void *a, const void *b, void *g)
{
    const gguf_tensor *t = ((const gguf_file *)g)->t;
    return strcmp(t[*(const size_t *)a].name, t[*(const size_t *)b].name);
}

static int cmp_offset(const void *a, const void *b, void *g)
{
    const gguf_tensor *t = ((const gguf_file *)g)->t;
    const gguf_tensor *x = &t[*(const size_t *)a], *y = &t[*(const size_t *)b];
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void free_parts(gguf_file *g)
{
    for (size_t i = 0; g->kv && i < g->n_kv; i++) {
        free(g->kv[i].key);
        free(g->kv[i].str_off);
    }
    for (size_t i = 0; g->t && i < g->n_t; i++) free(g->t[i].name);
    free(g->kv);
    free(g->t);
    free(g->by_name);
    g->kv = NULL;
    g->t = NULL;
    g->by_name = NULL;
    g->n_kv = g->n_t = 0;
}

/* Element alignment a tensor's data needs to be read in place. */
static uint64_t type_align(uint32_t t)
{
    switch (t) {
    case GGML_I8: return 1;
    case GGML_F32: case GGML_I32: return 4;
    case GGML_F64: case GGML_I64: return 8;
    default: return 2;        /* 16-bit elements, and quantized blocks start with an fp16 */
    }
}

static int parse_kvs(cur *c, gguf_file *g, uint64_t n_kv)
{
    /* A pair takes at least 8 (key length) + 4 (type) + 1 bytes. */
    if (n_kv > (c->size - c->pos) / 13 || n_kv > GGUF_KV_MAX)
        return phi3_fail(c->err, c->errlen, "metadata count %llu exceeds the file", (unsigned long long)n_kv);
    g->kv = xcalloc(n_kv ? n_kv : 1, sizeof *g->kv);
    for (uint64_t i = 0; i < n_kv; i++) {
        const uint8_t *k;
        uint64_t klen, t;
        if (rd_str(c, GGUF_KEY_MAX, &k, &klen, "metadata key")) return -1;
        if (klen == 0 || memchr(k, 0, klen))
            return phi3_fail(c->err, c->errlen, "metadata key %llu: empty or holds a NUL byte", (unsigned long long)i);
        gguf_kv *kv = &g->kv[g->n_kv++];
        kv->key = xmalloc(klen + 1);
        memcpy(kv->key, k, klen);
        kv->key[klen] = 0;
        kv->raw = c->p + c->pos;
        if (rd(c, 4, &t, kv->key)) return -1;
        kv->type = (uint32_t)t;
        kv->n = 1;
        kv->val = c->p + c->pos;
        if (t == GGUF_ARR) {
            if (need(c, 12, kv->key)) return -1;
            kv->arr_type = (uint32_t)le(c->p + c->pos, 4);
            kv->val += 12;
        }
        if (t >= GGUF_NVTYPE)
            return phi3_fail(c->err, c->errlen, "key %.64s: unknown value type %llu", kv->key, (unsigned long long)t);
        if (skip_value(c, (uint32_t)t, 0, kv->key, &kv->str_off, t == GGUF_ARR ? &kv->n : NULL)) return -1;
        kv->raw_len = (uint64_t)(c->p + c->pos - kv->raw);
    }
    return 0;
}

int gguf_parse(const uint8_t *buf, size_t size, gguf_file *g, char *err, size_t errlen)
{
    memset(g, 0, sizeof *g);
    if (errlen) err[0] = 0;
    cur c = {.p = buf, .size = size, .err = err, .errlen = errlen};
    uint64_t ver, n_t, n_kv;
    if (size < 4 || memcmp(buf, "GGUF", 4)) return phi3_fail(err, errlen, "not a GGUF file (no GGUF magic)");
    c.pos = 4;
    if (rd(&c, 4, &ver, "version")) return -1;
    if (ver == 1) return phi3_fail(err, errlen, "GGUF version 1 is not supported (convert to version 3)");
    if (ver != 2 && ver != 3) {
        if ((ver & 0xffff) == 0 && ver >> 16)
            return phi3_fail(err, errlen, "big-endian GGUF is not supported");
        return phi3_fail(err, errlen, "unknown GGUF version %llu", (unsigned long long)ver);
    }
    g->version = (uint32_t)ver;
    if (rd(&c, 8, &n_t, "tensor count") || rd(&c, 8, &n_kv, "metadata count")) return -1;
    int rc = parse_kvs(&c, g, n_kv);
    if (rc) goto out;
    if (g->n_kv > 1) {
        const char **keys = xmalloc(g->n_kv * sizeof *keys);
        for (size_t i = 0; i < g->n_kv; i++) keys[i] = g->kv[i].key;
        qsort(keys, g->n_kv, sizeof *keys, cmp_str);
        for (size_t i = 1; i < g->n_kv && !rc; i++)
            if (!strcmp(keys[i - 1], keys[i])) rc = phi3_fail(err, errlen, "key %.64s: appears twice", keys[i]);
        free(keys);
        if (rc) goto out;
    }

    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const gguf_kv *al = gguf_get(g, "general.alignment");
    if (al) {
        if (al->type != GGUF_U32) { rc = phi3_fail(err, errlen, "general.alignment is not a uint32"); goto out; }
        uint64_t a = le(al->val, 4);
        if (a == 0 || (a & (a - 1)) || a > (1u << 16)) {
            rc = phi3_fail(err, errlen, "general.alignment %llu is not a power of two up to 65536", (unsigned long long)a);
            goto out;
        }
        g->alignment = a;
    }

    /* A tensor info takes at least 8 + 4 + 8 + 4 + 8 bytes. */
    if (n_t > (c.size - c.pos) / 32 || n_t > GGUF_T_MAX) {
        rc = phi3_fail(err, errlen, "tensor count %llu exceeds the file", (unsigned long long)n_t);
        goto out;
    }
    g->t = xcalloc(n_t ? n_t : 1, sizeof *g->t);
    for (uint64_t i = 0; i < n_t; i++) {
        const uint8_t *s;
        uint64_t len, nd, type, off;
        if ((rc = rd_str(&c, GGUF_NAME_MAX, &s, &len, "tensor name"))) goto out;
        if (len == 0 || memchr(s, 0, len)) {
            rc = phi3_fail(err, errlen, "tensor %llu: empty name or a NUL byte in it", (unsigned long long)i);
            goto out;
        }
        gguf_tensor *t = &g->t[g->n_t++];
        t->name = xmalloc(len + 1);
        memcpy(t->name, s, len);
        t->name[len] = 0;
        if ((rc = rd(&c, 4, &nd, t->name))) goto out;
        if (nd == 0 || nd > GGUF_MAX_DIMS) {
            rc = phi3_fail(err, errlen, "tensor %.64s: %llu dimensions (1 to %d)", t->name, (unsigned long long)nd,
                      GGUF_MAX_DIMS);
            goto out;
        }
        t->ndim = (int)nd;
        uint64_t count = 1;
        for (int d = 0; d < t->ndim; d++) {
            if ((rc = rd(&c, 8, &t->ne[d], t->name))) goto out;
            if (t->ne[d] > INT64_MAX || __builtin_mul_overflow(count, t->ne[d], &count) || count > INT64_MAX) {
                rc = phi3_fail(err, errlen, "tensor %.64s: shape too large", t->name);
                goto out;
            }
        }
        if ((rc = rd(&c, 4, &type, t->name)) || (rc = rd(&c, 8, &off, t->name))) goto out;
        t->type = (uint32_t)type;
        if (!gguf_type_block(t->type)) {
            rc = phi3_fail(err, errlen, "tensor %.64s: type %s is not supported", t->name, gguf_type_name(t->type));
            goto out;
        }
        uint64_t row = gguf_row_bytes(t->type, t->ne[0]);
        if (!row && t->ne[0]) {
            rc = phi3_fail(err, errlen, "tensor %.64s: %llu columns are not whole %s blocks of %u", t->name,
                      (unsigned long long)t->ne[0], gguf_type_name(t->type), gguf_type_block(t->type));
            goto out;
        }
        uint64_t rows = t->ne[0] ? count / t->ne[0] : 0;
        if (__builtin_mul_overflow(row, rows, &t->nbytes)) {
            rc = phi3_fail(err, errlen, "tensor %.64s: shape too large", t->name);
            goto out;
        }
        t->offset = off;
        if (off % g->alignment) {
            rc = phi3_fail(err, errlen, "tensor %.64s: offset %llu not a multiple of the alignment %llu", t->name,
                      (unsigned long long)off, (unsigned long long)g->alignment);
            goto out;
        }
    }
    uint64_t data = c.pos + (g->alignment - c.pos % g->alignment) % g->alignment;
    g->data_off = data;
    uint64_t avail = data <= size ? size - data : 0;
    for (size_t i = 0; i < g->n_t; i++) {
        gguf_tensor *t = &g->t[i];
        if (t->offset > avail || t->nbytes > avail - t->offset) {
            rc = phi3_fail(err, errlen, "tensor %.64s: bytes [%llu, +%llu) beyond the data section (%llu bytes)",
                      t->name, (unsigned long long)t->offset, (unsigned long long)t->nbytes,
                      (unsigned long long)avail);
            goto out;
        }
        if ((data + t->offset) % type_align(t->type)) {
            rc = phi3_fail(err, errlen, "tensor %.64s: data not aligned to %llu bytes", t->name,
                      (unsigned long long)type_align(t->type));
            goto out;
        }
        t->data = buf + data + t->offset;
    }
    g->by_name = xmalloc((g->n_t ? g->n_t : 1) * sizeof *g->by_name);
    for (size_t i = 0; i < g->n_t; i++) g->by_name[i] = i;
    if (g->n_t > 1) {
        qsort_r(g->by_name, g->n_t, sizeof *g->by_name, cmp_offset, g);
        for (size_t i = 1; i < g->n_t; i++) {
            const gguf_tensor *a = &g->t[g->by_name[i - 1]], *b = &g->t[g->by_name[i]];
            if (b->offset < a->offset + a->nbytes) {
                rc = phi3_fail(err, errlen, "tensors %.64s and %.64s overlap", a->name, b->name);
                goto out;
            }
        }
        qsort_r(g->by_name, g->n_t, sizeof *g->by_name, cmp_tensor_idx, g);
        for (size_t i = 1; i < g->n_t; i++)
            if (!strcmp(g->t[g->by_name[i - 1]].name, g->t[g->by_name[i]].name)) {
                rc = phi3_fail(err, errlen, "tensor %.64s: appears twice", g->t[g->by_name[i]].name);
                goto out;
            }
    }
    g->map = buf;
    g->size = size;
out:
    if (rc) free_parts(g);
    return rc;
}

bool gguf_is_path(const char *path)
{
    struct stat st;
    if (!path) return false;
    size_t n = strlen(path);
    bool named = n >= 5 && !strcmp(path + n - 5, ".gguf");
    if (stat(path, &st)) return named;          /* a missing X.gguf: say so as a file */
    if (!S_ISREG(st.st_mode)) return false;
    if (named) return true;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    char m[4];
    bool yes = read(fd, m, 4) == 4 && !memcmp(m, "GGUF", 4);
    close(fd);
    return yes;
}

int gguf_open(const char *path, gguf_file *g, char *err, size_t errlen)
{
    memset(g, 0, sizeof *g);
    void *map;
    size_t size;
    struct stat st;
    if (mapguard_open(path, 24, "a GGUF header", &map, &size, &st, err, errlen)) return -1;
    char why[512];
    if (gguf_parse(map, size, g, why, sizeof why)) {
        mapguard_close(map, size);
        return phi3_fail(err, errlen, "%s: %s", path, why);
    }
    g->path = xstrdup(path);
    g->mapped = true;
    g->id = st;
    return 0;
}

void gguf_close(gguf_file *g)
{
    if (!g) return;
    free_parts(g);
    if (g->mapped) mapguard_close(g->map, g->size);
    free(g->path);
    memset(g, 0, sizeof *g);
}

const gguf_kv *gguf_get(const gguf_file *g, const char *key)
{
    for (size_t i = 0; i < g->n_kv; i++)
        if (!strcmp(g->kv[i].key, key)) return &g->kv[i];
    return NULL;
}

const gguf_tensor *gguf_find(const gguf_file *g, const char *name)
{
    size_t lo = 0, hi = g->n_t;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(g->t[g->by_name[mid]].name, name);
        if (!c) return &g->t[g->by_name[mid]];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

static bool is_int_type(uint32_t t)
{
    return t <= GGUF_I32 || t == GGUF_U64 || t == GGUF_I64;
}

static double num_at(uint32_t t, const uint8_t *p, int64_t *iv, bool *neg_big)
{
    uint64_t u = le(p, (int)vsize[t]);
    int64_t i;
    float f;
    double d;
    *neg_big = false;
    switch (t) {
    case GGUF_I8: i = (int8_t)u; break;
    case GGUF_I16: i = (int16_t)u; break;
    case GGUF_I32: i = (int32_t)u; break;
    case GGUF_I64: i = (int64_t)u; break;
    case GGUF_U64:
        if (u > INT64_MAX) *neg_big = true;
        i = (int64_t)(u & INT64_MAX);
        break;
    case GGUF_F32: {
        uint32_t w = (uint32_t)u;
        memcpy(&f, &w, 4);
        if (iv) *iv = 0;
        return f;
    }
    case GGUF_F64:
        memcpy(&d, &u, 8);
        if (iv) *iv = 0;
        return d;
    case GGUF_BOOL: i = (int64_t)u; break;
    default: i = (int64_t)u; break;
    }
    if (iv) *iv = i;
    return (double)i;
}

int gguf_get_int(const gguf_file *g, const char *key, int64_t lo, int64_t hi, int64_t *out, char *err,
                 size_t errlen)
{
    const gguf_kv *kv = gguf_get(g, key);
    if (!kv) return 0;
    int64_t v;
    bool big;
    if (!is_int_type(kv->type)) return phi3_fail(err, errlen, "%s: not an integer", key);
    num_at(kv->type, kv->val, &v, &big);
    if (big || v < lo || v > hi)
        return phi3_fail(err, errlen, "%s: must be an integer in [%lld, %lld]", key, (long long)lo, (long long)hi);
    *out = v;
    return 1;
}

int gguf_get_float(const gguf_file *g, const char *key, double *out, char *err, size_t errlen)
{
    const gguf_kv *kv = gguf_get(g, key);
    if (!kv) return 0;
    if (kv->type != GGUF_F32 && kv->type != GGUF_F64) return phi3_fail(err, errlen, "%s: not a float", key);
    bool big;
    *out = num_at(kv->type, kv->val, NULL, &big);
    return 1;
}

int gguf_get_bool(const gguf_file *g, const char *key, bool *out, char *err, size_t errlen)
{
    const gguf_kv *kv = gguf_get(g, key);
    if (!kv) return 0;
    if (kv->type != GGUF_BOOL) return phi3_fail(err, errlen, "%s: not a bool", key);
    *out = kv->val[0] != 0;
    return 1;
}

int gguf_get_str(const gguf_file *g, const char *key, const char **s, size_t *len, char *err, size_t errlen)
{
    const gguf_kv *kv = gguf_get(g, key);
    if (!kv) return 0;
    if (kv->type != GGUF_STR) return phi3_fail(err, errlen, "%s: not a string", key);
    *len = (size_t)le(kv->val, 8);
    *s = (const char *)kv->val + 8;
    return 1;
}

void gguf_arr_str(const gguf_kv *kv, uint64_t i, const char **s, size_t *len)
{
    const uint8_t *p = kv->val + kv->str_off[i];
    *len = (size_t)le(p, 8);
    *s = (const char *)p + 8;
}

bool gguf_arr_is_num(const gguf_kv *kv)
{
    return kv->type == GGUF_ARR && kv->arr_type < GGUF_NVTYPE && kv->arr_type != GGUF_STR &&
           kv->arr_type != GGUF_ARR && kv->arr_type != GGUF_BOOL;
}

bool gguf_arr_is_int(const gguf_kv *kv) { return kv->type == GGUF_ARR && is_int_type(kv->arr_type); }

double gguf_arr_num(const gguf_kv *kv, uint64_t i)
{
    bool big;
    int64_t iv;
    double d = num_at(kv->arr_type, kv->val + i * vsize[kv->arr_type], &iv, &big);
    if (big) return (double)iv + 0x1p63;       /* a U64 past INT64_MAX: num_at cleared its top bit */
    return kv->arr_type == GGUF_F32 || kv->arr_type == GGUF_F64 ? d : (double)iv;
}

/* ---- writer ---- */

typedef struct wbuf { uint8_t *p; size_t n, cap; } wbuf;

struct gguf_writer {
    wbuf kv, ti;
    uint64_t n_kv, n_t, data_bytes;   /* data_bytes: padded size of the data so far */
};

static void put(wbuf *b, const void *p, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 4096;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

static void put_le(wbuf *b, uint64_t v, int n)
{
    uint8_t x[8];
    for (int i = 0; i < n; i++) x[i] = (uint8_t)(v >> (8 * i));
    put(b, x, (size_t)n);
}

static void put_str(wbuf *b, const char *s, size_t n)
{
    put_le(b, n, 8);
    put(b, s, n);
}

static void put_key(gguf_writer *w, const char *key, uint32_t type)
{
    put_str(&w->kv, key, strlen(key));
    put_le(&w->kv, type, 4);
    w->n_kv++;
}

gguf_writer *gguf_writer_new(void) { return xcalloc(1, sizeof(gguf_writer)); }

void gguf_writer_free(gguf_writer *w)
{
    if (!w) return;
    free(w->kv.p);
    free(w->ti.p);
    free(w);
}

void gguf_w_str(gguf_writer *w, const char *key, const char *s)
{
    put_key(w, key, GGUF_STR);
    put_str(&w->kv, s, strlen(s));
}

void gguf_w_u32(gguf_writer *w, const char *key, uint32_t v) { put_key(w, key, GGUF_U32); put_le(&w->kv, v, 4); }
void gguf_w_i32(gguf_writer *w, const char *key, int32_t v) { put_key(w, key, GGUF_I32); put_le(&w->kv, (uint32_t)v, 4); }
void gguf_w_bool(gguf_writer *w, const char *key, bool v) { put_key(w, key, GGUF_BOOL); put_le(&w->kv, v, 1); }

void gguf_w_f32(gguf_writer *w, const char *key, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    put_key(w, key, GGUF_F32);
    put_le(&w->kv, u, 4);
}

static void put_arr_head(gguf_writer *w, const char *key, uint32_t type, size_t n)
{
    put_key(w, key, GGUF_ARR);
    put_le(&w->kv, type, 4);
    put_le(&w->kv, n, 8);
}

void gguf_w_arr_str(gguf_writer *w, const char *key, const char *const *s, const size_t *len, size_t n)
{
    put_arr_head(w, key, GGUF_STR, n);
    for (size_t i = 0; i < n; i++) put_str(&w->kv, s[i], len ? len[i] : strlen(s[i]));
}

void gguf_w_arr_f32(gguf_writer *w, const char *key, const float *v, size_t n)
{
    put_arr_head(w, key, GGUF_F32, n);
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        put_le(&w->kv, u, 4);
    }
}

void gguf_w_arr_i32(gguf_writer *w, const char *key, const int32_t *v, size_t n)
{
    put_arr_head(w, key, GGUF_I32, n);
    for (size_t i = 0; i < n; i++) put_le(&w->kv, (uint32_t)v[i], 4);
}

void gguf_w_raw(gguf_writer *w, const gguf_kv *kv)
{
    put_str(&w->kv, kv->key, strlen(kv->key));
    put(&w->kv, kv->raw, (size_t)kv->raw_len);
    w->n_kv++;
}

uint64_t gguf_w_tensor(gguf_writer *w, const char *name, uint32_t type, int ndim, const uint64_t *ne)
{
    uint64_t rows = 1;
    for (int d = 1; d < ndim; d++) rows *= ne[d];
    uint64_t bytes = gguf_row_bytes(type, ne[0]) * rows;
    if (!bytes) return 0;
    put_str(&w->ti, name, strlen(name));
    put_le(&w->ti, (uint64_t)ndim, 4);
    for (int d = 0; d < ndim; d++) put_le(&w->ti, ne[d], 8);
    put_le(&w->ti, type, 4);
    put_le(&w->ti, w->data_bytes, 8);
    w->n_t++;
    w->data_bytes += (bytes + GGUF_DEFAULT_ALIGNMENT - 1) / GGUF_DEFAULT_ALIGNMENT * GGUF_DEFAULT_ALIGNMENT;
    return bytes;
}

static uint64_t header_bytes(const gguf_writer *w)
{
    uint64_t n = 24 + w->kv.n + w->ti.n;
    return (n + GGUF_DEFAULT_ALIGNMENT - 1) / GGUF_DEFAULT_ALIGNMENT * GGUF_DEFAULT_ALIGNMENT;
}

uint64_t gguf_w_total(const gguf_writer *w) { return header_bytes(w) + w->data_bytes; }

int gguf_w_header(gguf_writer *w, FILE *f)
{
    wbuf h = {0};
    put(&h, "GGUF", 4);
    put_le(&h, 3, 4);
    put_le(&h, w->n_t, 8);
    put_le(&h, w->n_kv, 8);
    /* A writer without metadata or tensors has NULL buffers: fwrite must not get them. */
    int rc = fwrite(h.p, 1, h.n, f) == h.n && (!w->kv.n || fwrite(w->kv.p, 1, w->kv.n, f) == w->kv.n) &&
             (!w->ti.n || fwrite(w->ti.p, 1, w->ti.n, f) == w->ti.n) ? 0 : -1;
    free(h.p);
    return rc ? rc : gguf_w_pad(w, f);
}

int gguf_w_pad(gguf_writer *w, FILE *f)
{
    static const uint8_t zero[GGUF_DEFAULT_ALIGNMENT];
    off_t pos = ftello(f);
    if (pos < 0) return -1;
    size_t pad = (size_t)((GGUF_DEFAULT_ALIGNMENT - (uint64_t)pos % GGUF_DEFAULT_ALIGNMENT) % GGUF_DEFAULT_ALIGNMENT);
    return fwrite(zero, 1, pad, f) == pad ? 0 : -1;
}
