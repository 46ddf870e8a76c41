/* safetensors.c: parse and validate safetensors files (untrusted input): an 8-byte
 * little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then
 * the data section. Files are mmapped read-only; tensors point into the mapping. */
#include "embed/model.h"
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The format's own limit on the header (safetensors rejects larger ones). */
#define ST_HEADER_MAX (100u << 20)

static const struct { const char *name; size_t size; } dtypes[ST_NDTYPE] = {
    [ST_F32] = {"F32", 4},   [ST_F16] = {"F16", 2},   [ST_BF16] = {"BF16", 2},
    [ST_F64] = {"F64", 8},   [ST_I8] = {"I8", 1},     [ST_I16] = {"I16", 2},
    [ST_I32] = {"I32", 4},   [ST_I64] = {"I64", 8},   [ST_U8] = {"U8", 1},
    [ST_U16] = {"U16", 2},   [ST_U32] = {"U32", 4},   [ST_U64] = {"U64", 8},
    [ST_BOOL] = {"BOOL", 1}, [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E5M2] = {"F8_E5M2", 1},
};

size_t st_dtype_size(st_dtype d) { return d < ST_NDTYPE ? dtypes[d].size : 0; }
const char *st_dtype_name(st_dtype d) { return d < ST_NDTYPE ? dtypes[d].name : "?"; }

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

void st_tensors_free(st_tensor *t, int n)
{
    for (int i = 0; t && i < n; i++) free(t[i].name);
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

/* One header entry -> t (name already set). data: start of the data section. */
static int parse_entry(json_t *v, st_tensor *t, size_t hdr_end, size_t data_len,
                       const uint8_t *data, char *err, size_t errlen)
{
    if (!json_is_object(v)) return fail(err, errlen, "tensor %s: entry is not an object", t->name);
    json_t *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape"),
           *of = json_object_get(v, "data_offsets");
    if (!json_is_string(dt) || !json_is_array(sh) || !json_is_array(of))
        return fail(err, errlen, "tensor %s: needs string dtype, array shape and array data_offsets",
                    t->name);
    int d;
    for (d = 0; d < ST_NDTYPE; d++)
        if (!strcmp(json_string_value(dt), dtypes[d].name)) break;
    if (d == ST_NDTYPE)
        return fail(err, errlen, "tensor %s: unknown dtype %.32s", t->name, json_string_value(dt));
    t->dtype = (st_dtype)d;
    size_t nd = json_array_size(sh);
    if (nd > ST_MAX_DIMS) return fail(err, errlen, "tensor %s: %zu dimensions (max %d)", t->name, nd, ST_MAX_DIMS);
    t->ndim = (int)nd;
    size_t count = 1;
    for (size_t i = 0; i < nd; i++) {
        json_t *e = json_array_get(sh, i);
        if (!json_is_integer(e) || json_integer_value(e) < 0)
            return fail(err, errlen, "tensor %s: shape[%zu] is not a non-negative integer", t->name, i);
        t->shape[i] = json_integer_value(e);
        if (__builtin_mul_overflow(count, (size_t)t->shape[i], &count))
            return fail(err, errlen, "tensor %s: shape too large", t->name);
    }
    size_t bytes;
    if (__builtin_mul_overflow(count, dtypes[d].size, &bytes))
        return fail(err, errlen, "tensor %s: shape too large", t->name);
    json_t *b0 = json_array_get(of, 0), *b1 = json_array_get(of, 1);
    if (json_array_size(of) != 2 || !json_is_integer(b0) || !json_is_integer(b1) ||
        json_integer_value(b0) < 0 || json_integer_value(b1) < json_integer_value(b0))
        return fail(err, errlen, "tensor %s: data_offsets must be [begin, end] with 0 <= begin <= end",
                    t->name);
    uint64_t beg = (uint64_t)json_integer_value(b0), end = (uint64_t)json_integer_value(b1);
    if (end > data_len)
        return fail(err, errlen, "tensor %s: data_offsets [%llu, %llu] beyond the data section (%zu bytes)",
                    t->name, (unsigned long long)beg, (unsigned long long)end, data_len);
    if (end - beg != bytes)
        return fail(err, errlen, "tensor %s: %llu bytes but shape x %s needs %zu", t->name,
                    (unsigned long long)(end - beg), dtypes[d].name, bytes);
    /* Elements are read in place: keep them aligned to their size within the file
     * (the safetensors writer pads the header for this). */
    if ((hdr_end + beg) % dtypes[d].size)
        return fail(err, errlen, "tensor %s: data not aligned to %zu bytes", t->name, dtypes[d].size);
    t->offset = (size_t)beg;
    t->nbytes = bytes;
    t->data = data + beg;
    return 0;
}

int st_parse(const uint8_t *buf, size_t size, st_tensor **out, int *n, char *err, size_t errlen)
{
    *out = NULL;
    *n = 0;
    if (size < 8) return fail(err, errlen, "file too short for a safetensors header (%zu bytes)", size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
    if (hlen < 2 || hlen > ST_HEADER_MAX || hlen > size - 8)
        return fail(err, errlen, "bad header length %llu (file has %zu bytes)",
                    (unsigned long long)hlen, size);
    json_error_t je;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root) return fail(err, errlen, "header is not valid JSON: %s (offset %d)", je.text, je.position);
    if (!json_is_object(root)) {
        json_decref(root);
        return fail(err, errlen, "header is not a JSON object");
    }
    size_t hdr_end = 8 + (size_t)hlen, data_len = size - hdr_end;
    size_t cap = json_object_size(root);
    st_tensor *t = calloc(cap ? cap : 1, sizeof *t);
    if (!t) {
        json_decref(root);
        return fail(err, errlen, "out of memory");
    }
    int k = 0, rc = 0;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "__metadata__")) continue;
        t[k].name = strdup(key);
        if (!t[k].name) { rc = fail(err, errlen, "out of memory"); break; }
        k++;
        if ((rc = parse_entry(v, &t[k - 1], hdr_end, data_len, buf + hdr_end, err, errlen))) break;
    }
    json_decref(root);
    if (!rc && k > 1) {
        qsort(t, (size_t)k, sizeof *t, cmp_offset);
        for (int i = 1; i < k; i++)
            if (t[i].offset < t[i - 1].offset + t[i - 1].nbytes) {
                rc = fail(err, errlen, "tensors %s and %s overlap", t[i - 1].name, t[i].name);
                break;
            }
    }
    if (rc) {
        st_tensors_free(t, k);
        return -1;
    }
    qsort(t, (size_t)k, sizeof *t, cmp_name);
    *out = t;
    *n = k;
    return 0;
}

int st_open(const char *path, st_file *f, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    /* O_NONBLOCK: a FIFO (or a device) named as a shard must not block the open; fstat
     * then refuses anything but a regular file. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return fail(err, errlen, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return fail(err, errlen, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return fail(err, errlen, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    if (size < 8) {
        close(fd);
        return fail(err, errlen, "%s: file too short for a safetensors header (%zu bytes)", path, size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) return fail(err, errlen, "%s: mmap: %s", path, strerror(e));
    mapguard_add(map, size, path);
    char why[256];
    if (st_parse(map, size, &f->t, &f->n, why, sizeof why)) {
        mapguard_remove(map);
        munmap(map, size);
        return fail(err, errlen, "%s: %s", path, why);
    }
    f->path = strdup(path);
    f->map = map;
    f->size = size;
    f->id = st;
    return 0;
}

void st_close(st_file *f)
{
    if (f->map) {
        mapguard_remove(f->map);
        munmap(f->map, f->size);
    }
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
        fail(err, errlen, "tensor %s: missing", name);
        return NULL;
    }
    int ok = (dtype_mask & ST_MASK(t->dtype)) && t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        if (shape[i] >= 0 && shape[i] != t->shape[i]) ok = 0;
    if (ok) return t;
    char want[128], got[128];
    describe(want, sizeof want, dtype_mask, 0, ndim, shape);
    describe(got, sizeof got, t->dtype, 1, t->ndim, t->shape);
    fail(err, errlen, "tensor %s: expected %s, got %s", name, want, got);
    return NULL;
}

const st_tensor *st_fetch(const st_file *f, const char *name, unsigned dtype_mask, int ndim,
                          const int64_t *shape, char *err, size_t errlen)
{
    return st_check(st_find(f, name), name, dtype_mask, ndim, shape, err, errlen);
}
