/* safetensors.c: parse and validate safetensors files (untrusted input): an 8-byte
 * little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then
 * the data section. Files are mmapped read-only; tensors point into the mapping. */
#include "embed/model.h"
#include "embed/jscan.h"
#include "shared/util.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The format's own limit on the header: the safetensors library refuses headers over
 * 100,000,000 bytes (its MAX_HEADER_SIZE). Parsed without a tree (jscan), a header of that
 * size costs its mapping plus ~2.5x in tensor structs and names. */
#define ST_HEADER_MAX 100000000u

static const struct { const char *name; size_t size; } dtypes[ST_NDTYPE] = {
    [ST_F32] = {"F32", 4},   [ST_F16] = {"F16", 2},   [ST_BF16] = {"BF16", 2},
    [ST_F64] = {"F64", 8},   [ST_I8] = {"I8", 1},     [ST_I16] = {"I16", 2},
    [ST_I32] = {"I32", 4},   [ST_I64] = {"I64", 8},   [ST_U8] = {"U8", 1},
    [ST_U16] = {"U16", 2},   [ST_U32] = {"U32", 4},   [ST_U64] = {"U64", 8},
    [ST_BOOL] = {"BOOL", 1}, [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E5M2] = {"F8_E5M2", 1},
    [ST_Q8_0] = {"Q8_0", 0}, [ST_Q4_0] = {"Q4_0", 0}, [ST_Q4_K] = {"Q4_K", 0},
    [ST_Q5_K] = {"Q5_K", 0}, [ST_Q6_K] = {"Q6_K", 0},
};

size_t st_dtype_size(st_dtype d) { return d < ST_NDTYPE ? dtypes[d].size : 0; }
const char *st_dtype_name(st_dtype d) { return d < ST_NDTYPE ? dtypes[d].name : "?"; }

/* The tensors and their names are one allocation (names after the array). */
void st_tensors_free(st_tensor *t, int n)
{
    (void)n;
    free(t);
}

static int cmp_offset(const void *a, const void *b)
{
    const st_tensor *x = a, *y = b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

/* A JSON array of integers (j at its '['): the first cap values to v, their count to *n,
 * the index of the first element that is not an integer >= min to *bad (-1: none). */
static int int_array(jscan *j, int64_t *v, int cap, int64_t min, int *n, int *bad)
{
    *n = 0;
    *bad = -1;
    j->p++;
    if (js_peek(j) == ']') {
        j->p++;
        return 0;
    }
    for (int q = 1; q == 1;) {
        int64_t x = -1;
        int is_int = 0;
        int c = js_peek(j);
        if (c == '-' || (c >= '0' && c <= '9')) { if (js_number(j, &x, &is_int)) return -1; }
        else if (js_skip(j)) return -1;
        if ((!is_int || x < min) && *bad < 0) *bad = *n;
        if (*n < cap) v[*n] = x;
        (*n)++;
        if ((q = js_next(j, ']')) < 0) return -1;
    }
    return 0;
}

/* One header entry {"dtype": ..., "shape": [...], "data_offsets": [b, e]} (other keys
 * skipped) -> t (name already set). data: start of the data section. */
static int parse_entry(jscan *j, st_tensor *t, size_t hdr_end, size_t data_len, const uint8_t *data, char *err,
                       size_t errlen)
{
    if (js_peek(j) != '{') return phi3_fail(err, errlen, "tensor %s: entry is not an object", t->name);
    j->p++;
    int have_dt = 0, have_sh = 0, have_of = 0, d = ST_NDTYPE;
    int64_t off[2] = {0, 0};
    int bad_sh = -1, bad_of = -1, nd = 0, n_of = 0;
    char dts[16] = "";
    if (js_peek(j) == '}') j->p++;
    else
        for (int r = 1; r == 1;) {
            char key[16];
            size_t raw, len;
            if (js_peek(j) != '"') return js_lit(j, '"');
            /* A key longer than ours: skip it (after checking it) as unknown. */
            jscan probe = *j;
            if (js_string(&probe, NULL, NULL, &raw)) { *j = probe; return -1; }
            if (raw < sizeof key) js_string(j, key, &len, NULL);
            else { *j = probe; key[0] = 0; }
            if (js_lit(j, ':')) return -1;
            int *have = !strcmp(key, "dtype") ? &have_dt : !strcmp(key, "shape") ? &have_sh
                      : !strcmp(key, "data_offsets") ? &have_of : NULL;
            if (have && *have) return phi3_fail(err, errlen, "header is not valid JSON: duplicate key %s in tensor %s", key, t->name);
            if (have) *have = 1;
            if (have == &have_dt) {
                if (js_peek(j) != '"') { have_dt = 2; if (js_skip(j)) return -1; }
                else {
                    size_t dl;
                    probe = *j;
                    if (js_string(&probe, NULL, &dl, &raw)) { *j = probe; return -1; }
                    if (raw < sizeof dts) js_string(j, dts, &dl, NULL);
                    else { *j = probe; snprintf(dts, sizeof dts, "%.12s...", j->p - raw - 1); }
                }
            } else if (have) {        /* shape or data_offsets */
                if (js_peek(j) != '[') { *have = 2; if (js_skip(j)) return -1; }
                else if (have == &have_sh ? int_array(j, t->shape, ST_MAX_DIMS, 0, &nd, &bad_sh)
                                          : int_array(j, off, 2, INT64_MIN, &n_of, &bad_of))
                    return -1;
            } else if (js_skip(j))
                return -1;
            if ((r = js_next(j, '}')) < 0) return -1;
        }
    if (have_dt != 1 || have_sh != 1 || have_of != 1)
        return phi3_fail(err, errlen, "tensor %s: needs string dtype, array shape and array data_offsets", t->name);
    for (d = 0; d < ST_N_SAFETENSORS; d++)
        if (!strcmp(dts, dtypes[d].name)) break;
    if (d == ST_N_SAFETENSORS) return phi3_fail(err, errlen, "tensor %s: unknown dtype %.32s", t->name, dts);
    t->dtype = (st_dtype)d;
    if (nd > ST_MAX_DIMS) return phi3_fail(err, errlen, "tensor %s: %d dimensions (max %d)", t->name, nd, ST_MAX_DIMS);
    t->ndim = nd;
    if (bad_sh >= 0) return phi3_fail(err, errlen, "tensor %s: shape[%d] is not a non-negative integer", t->name, bad_sh);
    size_t count = 1;
    for (int i = 0; i < nd; i++)
        if (__builtin_mul_overflow(count, (size_t)t->shape[i], &count))
            return phi3_fail(err, errlen, "tensor %s: shape too large", t->name);
    size_t bytes;
    if (__builtin_mul_overflow(count, dtypes[d].size, &bytes))
        return phi3_fail(err, errlen, "tensor %s: shape too large", t->name);
    if (n_of != 2 || bad_of >= 0 || off[0] < 0 || off[1] < off[0])
        return phi3_fail(err, errlen, "tensor %s: data_offsets must be [begin, end] with 0 <= begin <= end", t->name);
    uint64_t beg = (uint64_t)off[0], end = (uint64_t)off[1];
    if (end > data_len)
        return phi3_fail(err, errlen, "tensor %s: data_offsets [%llu, %llu] beyond the data section (%zu bytes)",
                    t->name, (unsigned long long)beg, (unsigned long long)end, data_len);
    if (end - beg != bytes)
        return phi3_fail(err, errlen, "tensor %s: %llu bytes but shape x %s needs %zu", t->name,
                    (unsigned long long)(end - beg), dtypes[d].name, bytes);
    /* Elements are read in place: keep them aligned to their size within the file
     * (the safetensors writer pads the header for this). */
    if ((hdr_end + beg) % dtypes[d].size)
        return phi3_fail(err, errlen, "tensor %s: data not aligned to %zu bytes", t->name, dtypes[d].size);
    t->offset = (size_t)beg;
    t->nbytes = bytes;
    t->data = data + beg;
    return 0;
}

/* First pass: the header is one JSON object and nothing else; count its members and
 * the raw bytes of their keys (the decoded names are never longer). */
static int count_members(const char *h, size_t len, size_t *members, size_t *key_bytes, char *err, size_t errlen)
{
    jscan j;
    js_init(&j, h, len);
    *members = *key_bytes = 0;
    if (js_peek(&j) != '{') {
        if (js_skip(&j) == 0 && js_end(&j) == 0) return phi3_fail(err, errlen, "header is not a JSON object");
        return phi3_fail(err, errlen, "header is not valid JSON: %s (offset %zu)", j.why, js_offset(&j));
    }
    j.p++;
    int r = js_peek(&j) == '}' ? (j.p++, 0) : 1;
    while (r == 1) {
        size_t raw;
        if (js_string(&j, NULL, NULL, &raw) || js_lit(&j, ':') || js_skip(&j)) break;
        (*members)++;
        *key_bytes += raw + 1;
        r = js_next(&j, '}');
    }
    if (r != 0 || js_end(&j))
        return phi3_fail(err, errlen, "header is not valid JSON: %s (offset %zu)", j.why, js_offset(&j));
    return 0;
}

int st_parse(const uint8_t *buf, size_t size, st_tensor **out, int *n, char *err, size_t errlen)
{
    *out = NULL;
    *n = 0;
    if (size < 8) return phi3_fail(err, errlen, "file too short for a safetensors header (%zu bytes)", size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
    if (hlen < 2 || hlen > ST_HEADER_MAX || hlen > size - 8)
        return phi3_fail(err, errlen, "bad header length %llu (file has %zu bytes)",
                    (unsigned long long)hlen, size);
    const char *h = (const char *)buf + 8;
    size_t members, key_bytes;
    if (count_members(h, (size_t)hlen, &members, &key_bytes, err, errlen)) return -1;
    if (members > INT32_MAX) return phi3_fail(err, errlen, "header has too many entries");
    size_t hdr_end = 8 + (size_t)hlen, data_len = size - hdr_end;
    st_tensor *t = calloc(1, members * sizeof *t + key_bytes + 1);
    if (!t) return phi3_fail(err, errlen, "out of memory");
    char *names = (char *)(t + members);
    int k = 0, rc = 0, meta = 0;
    jscan j;
    js_init(&j, h, (size_t)hlen);
    js_lit(&j, '{');
    for (int r = js_peek(&j) == '"'; r == 1 && !rc;) {
        size_t len;
        js_string(&j, names, &len, NULL);
        js_lit(&j, ':');
        if (!strcmp(names, "__metadata__")) {
            if (meta++) rc = phi3_fail(err, errlen, "header is not valid JSON: duplicate key __metadata__");
            js_skip(&j);
        } else {
            t[k].name = names;
            names += len + 1;
            k++;
            rc = parse_entry(&j, &t[k - 1], hdr_end, data_len, buf + hdr_end, err, errlen);
            if (rc && j.why[0])
                phi3_fail(err, errlen, "header is not valid JSON: %s (offset %zu)", j.why, js_offset(&j));
        }
        if (!rc) r = js_next(&j, '}');
    }
    if (!rc && k > 1) {
        qsort(t, (size_t)k, sizeof *t, cmp_offset);
        for (int i = 1; i < k; i++)
            if (t[i].offset < t[i - 1].offset + t[i - 1].nbytes) {
                rc = phi3_fail(err, errlen, "tensors %s and %s overlap", t[i - 1].name, t[i].name);
                break;
            }
    }
    if (!rc && k > 1) {
        qsort(t, (size_t)k, sizeof *t, cmp_name);
        for (int i = 1; i < k; i++)
            if (!strcmp(t[i].name, t[i - 1].name)) {
                rc = phi3_fail(err, errlen, "header is not valid JSON: duplicate key %s", t[i].name);
                break;
            }
    }
    if (rc) {
        st_tensors_free(t, k);
        return -1;
    }
    *out = t;
    *n = k;
    return 0;
}

int st_open(const char *path, st_file *f, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    void *map;
    size_t size;
    struct stat st;
    if (mapguard_open(path, 8, "a safetensors header", &map, &size, &st, err, errlen)) return -1;
    char why[256];
    if (st_parse(map, size, &f->t, &f->n, why, sizeof why)) {
        mapguard_close(map, size);
        return phi3_fail(err, errlen, "%s: %s", path, why);
    }
    f->path = xstrdup(path);
    f->map = map;
    f->size = size;
    f->id = st;
    return 0;
}

void st_close(st_file *f)
{
    mapguard_close(f->map, f->size);
    st_tensors_free(f->t, f->n);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const st_tensor *st_find(const st_file *f, const char *name)
{
    st_tensor key = {.name = (char *)name};
    return f->n ? bsearch(&key, f->t, (size_t)f->n, sizeof key, cmp_name) : NULL;
}

/* "BF16|F16|F32 [576, 192]" */
static void describe(char *s, size_t len, unsigned mask, int single, int ndim, const int64_t *shape)
{
    size_t o = 0;
    for (int d = 0, first = 1; d < ST_NDTYPE && o < len; d++)
        if (single ? (unsigned)d == mask : (mask & ST_MASK(d))) {
            o += (size_t)snprintf(s + o, len - o, "%s%s", first ? "" : "|", dtypes[d].name);
            first = 0;
        }
    if (o < len) o += (size_t)snprintf(s + o, len - o, " [");
    for (int i = 0; i < ndim && o < len; i++) {
        if (shape[i] < 0) o += (size_t)snprintf(s + o, len - o, "%s*", i ? ", " : "");
        else o += (size_t)snprintf(s + o, len - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    }
    if (o < len) snprintf(s + o, len - o, "]");
}

const st_tensor *st_check(const st_tensor *t, const char *name, unsigned dtype_mask, int ndim,
                          const int64_t *shape, char *err, size_t errlen)
{
    if (!t) {
        phi3_fail(err, errlen, "tensor %s: missing", name);
        return NULL;
    }
    int ok = (dtype_mask & ST_MASK(t->dtype)) && t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        if (shape[i] >= 0 && shape[i] != t->shape[i]) ok = 0;
    if (ok) return t;
    char want[128], got[128];
    describe(want, sizeof want, dtype_mask, 0, ndim, shape);
    describe(got, sizeof got, t->dtype, 1, t->ndim, t->shape);
    phi3_fail(err, errlen, "tensor %s: expected %s, got %s", name, want, got);
    return NULL;
}

const st_tensor *st_fetch(const st_file *f, const char *name, unsigned dtype_mask, int ndim,
                          const int64_t *shape, char *err, size_t errlen)
{
    return st_check(st_find(f, name), name, dtype_mask, ndim, shape, err, errlen);
}
