/* stream.c: incremental frame reader and frame writer over file descriptors.
 *
 * Reading is two steps. A small structural scanner walks the buffered bytes and decides,
 * without allocating, whether they hold a complete msgpack value, need more input, or are
 * invalid; it also rejects any length or count that could not fit in the frame cap, so a
 * hostile header never reaches an allocator. Only a complete frame is handed to
 * msgpack_unpack, whose allocations are then bounded by a small multiple of its size. */
#include "shared/stream.h"
#include "shared/util.h"
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct frame_reader {
    int fd;
    size_t max;          /* cap on one frame, bytes */
    unsigned char *buf;
    size_t cap, len;     /* allocated, buffered */
    size_t start;        /* first byte of the next frame */
    const unsigned char *last_p;   /* the frame returned last: its bytes (owned by the frame) */
    size_t last;
    int eof;
    long count;
    size_t scan_i;       /* resume point of the scan of a frame arriving in pieces: */
    uint64_t scan_pending; /* offset of the first unfinished value, values still to read */
    char err[256];
};

enum { SCAN_DONE, SCAN_MORE, SCAN_BAD };

static uint64_t be(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

/* Scan one msgpack value at p[0..n). SCAN_DONE sets *used; SCAN_BAD writes err.
 * Resumable: *ri and *rpending say where the previous SCAN_MORE stopped (0 and 1 for a
 * new frame), so a big frame arriving in many pieces is scanned once, not once a piece. */
static int scan(const unsigned char *p, size_t n, size_t max, size_t *used, char *err, size_t errlen,
                size_t *ri, uint64_t *rpending)
{
    uint64_t pending = *rpending;  /* values still to read */
    size_t i = *ri;
    while (pending > 0) {
        if (i >= n) { *ri = i; *rpending = pending; return SCAN_MORE; }
        unsigned b = p[i];
        size_t at = i;
        int hdr = 0;           /* bytes of length/count after the type byte */
        uint64_t payload = 0;  /* bytes of data after the header */
        uint64_t children = 0; /* nested values */
        int kind = 0;          /* 0 fixed, 1 str/bin/ext length, 2 array count, 3 map count */
        int extra = 0;         /* ext type byte */
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
        } else if (b <= 0x8f) { children = 2 * (uint64_t)(b & 0x0f);
        } else if (b <= 0x9f) { children = b & 0x0f;
        } else if (b <= 0xbf) { payload = b & 0x1f;
        } else switch (b) {
            case 0xc4: case 0xd9: hdr = 1; kind = 1; break;
            case 0xc5: case 0xda: hdr = 2; kind = 1; break;
            case 0xc6: case 0xdb: hdr = 4; kind = 1; break;
            case 0xc7: hdr = 1; kind = 1; extra = 1; break;
            case 0xc8: hdr = 2; kind = 1; extra = 1; break;
            case 0xc9: hdr = 4; kind = 1; extra = 1; break;
            case 0xca: payload = 4; break;
            case 0xcb: payload = 8; break;
            case 0xcc: case 0xd0: payload = 1; break;
            case 0xcd: case 0xd1: payload = 2; break;
            case 0xce: case 0xd2: payload = 4; break;
            case 0xcf: case 0xd3: payload = 8; break;
            case 0xd4: payload = 2; break;
            case 0xd5: payload = 3; break;
            case 0xd6: payload = 5; break;
            case 0xd7: payload = 9; break;
            case 0xd8: payload = 17; break;
            case 0xdc: hdr = 2; kind = 2; break;
            case 0xdd: hdr = 4; kind = 2; break;
            case 0xde: hdr = 2; kind = 3; break;
            case 0xdf: hdr = 4; kind = 3; break;
            default:
                snprintf(err, errlen, "not msgpack (byte 0x%02x at offset %zu)", b, at);
                return SCAN_BAD;
        }
        i++;
        if (hdr) {
            if (n - i < (size_t)hdr) { *ri = at; *rpending = pending; return SCAN_MORE; }
            uint64_t v = be(p + i, hdr);
            i += (size_t)hdr;
            if (kind == 1) {
                if (v > max) {
                    snprintf(err, errlen, "%s header at offset %zu claims %llu bytes, over the frame cap of %zu",
                             b == 0xd9 || b == 0xda || b == 0xdb ? "str" : extra ? "ext" : "bin",
                             at, (unsigned long long)v, max);
                    return SCAN_BAD;
                }
                payload = v + (uint64_t)extra;
            } else {
                /* Every element takes at least one byte: a count over the cap cannot fit. */
                if (v > max) {
                    snprintf(err, errlen, "%s header at offset %zu claims %llu elements, over the frame cap of %zu bytes",
                             kind == 2 ? "array" : "map", at, (unsigned long long)v, max);
                    return SCAN_BAD;
                }
                children = kind == 3 ? 2 * v : v;
            }
        }
        if (payload > n - i) {
            if (i + payload > max) {
                snprintf(err, errlen, "frame larger than the cap of %zu bytes", max);
                return SCAN_BAD;
            }
            *ri = at;
            *rpending = pending;
            return SCAN_MORE;
        }
        i += (size_t)payload;
        pending = pending - 1 + children;
        if (i > max || pending > max) {
            snprintf(err, errlen, "frame larger than the cap of %zu bytes", max);
            return SCAN_BAD;
        }
    }
    *used = i;
    return SCAN_DONE;
}

/* A logits frame is 128 KiB; the default 64 KiB pipe would cost several context switches
 * per frame. Ask for 1 MiB (the unprivileged limit); harmless if fd is not a pipe. */
static void widen_pipe(int fd)
{
#ifdef F_SETPIPE_SZ
    int cur = fcntl(fd, F_GETPIPE_SZ);
    if (cur > 0 && cur < (1 << 20)) (void)fcntl(fd, F_SETPIPE_SZ, 1 << 20);
#else
    (void)fd;
#endif
}

size_t frame_cap(void)
{
    const char *e = getenv("PHI3_MAX_FRAME");
    long v;
    if (e && parse_long(e, &v) == 0 && v >= 64) return (size_t)v;
    return FRAME_MAX_DEFAULT;
}

/* A logits frame is 128 KiB, and decode copies each frame into a fresh block that
 * frame_free gives back: with glibc's defaults that block came from the top of the heap
 * and was trimmed again every frame (two brk calls and a page fault per 4 KiB per frame:
 * phi3-run --connect relaying 200 logits frames used 0.13 s of CPU, 0.02 s with this).
 * So a process that reads frames keeps freed blocks below 4 MiB for reuse. */
static void keep_freed_blocks(void)
{
    static int done;
    if (done) return;
    done = 1;
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
}

frame_reader *fr_open(int fd, size_t max_frame)
{
    keep_freed_blocks();
    frame_reader *r = xcalloc(1, sizeof *r);
    widen_pipe(fd);
    r->fd = fd;
    if (!max_frame) max_frame = frame_cap();
    r->max = max_frame;
    r->cap = 65536;
    r->buf = xmalloc(r->cap);
    return r;
}

void fr_close(frame_reader *r)
{
    if (!r) return;
    free(r->buf);
    free(r);
}

const char *fr_error(const frame_reader *r) { return r->err; }
long fr_count(const frame_reader *r) { return r->count; }

static const char *kind_name(msgpack_object_type t)
{
    switch (t) {
    case MSGPACK_OBJECT_NIL: return "nil";
    case MSGPACK_OBJECT_BOOLEAN: return "bool";
    case MSGPACK_OBJECT_POSITIVE_INTEGER: case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "int";
    case MSGPACK_OBJECT_FLOAT32: case MSGPACK_OBJECT_FLOAT64: return "float";
    case MSGPACK_OBJECT_STR: return "str";
    case MSGPACK_OBJECT_ARRAY: return "array";
    case MSGPACK_OBJECT_MAP: return "map";
    case MSGPACK_OBJECT_BIN: return "bin";
    case MSGPACK_OBJECT_EXT: return "ext";
    }
    if (t == FRAME_OBJECT_INTS) return "array";
    return "?";
}

typedef struct keyref { const char *p; uint32_t n; } keyref;

static int keyref_cmp(const void *a, const void *b)
{
    const keyref *x = a, *y = b;
    uint32_t n = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->p, y->p, n);
    return c ? c : (x->n > y->n) - (x->n < y->n);
}

/* The first string key that appears twice in a map anywhere inside o, or NULL. One rule
 * for every reader: a frame with a duplicate key is invalid (msgpack leaves it open; we
 * would otherwise have to pick the first or the last, and tools and dump could differ). */
static const keyref *dup_key(const msgpack_object *o, keyref *found)
{
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < o->via.array.size; i++)
            if (dup_key(&o->via.array.ptr[i], found)) return found;
        return NULL;
    }
    if (o->type != MSGPACK_OBJECT_MAP) return NULL;
    const msgpack_object_map *m = &o->via.map;
    for (uint32_t i = 0; i < m->size; i++)
        if (dup_key(&m->ptr[i].key, found) || dup_key(&m->ptr[i].val, found)) return found;
    if (m->size < 2) return NULL;
    keyref *k = xmalloc(sizeof *k * m->size);
    uint32_t n = 0;
    for (uint32_t i = 0; i < m->size; i++)
        if (m->ptr[i].key.type == MSGPACK_OBJECT_STR)
            k[n++] = (keyref){m->ptr[i].key.via.str.ptr, m->ptr[i].key.via.str.size};
    qsort(k, n, sizeof *k, keyref_cmp);
    const keyref *hit = NULL;
    for (uint32_t i = 1; i < n && !hit; i++)
        if (keyref_cmp(&k[i - 1], &k[i]) == 0) { *found = k[i]; hit = found; }
    free(k);
    return hit;
}

/* ---- parsing a complete frame (already checked by scan) into msgpack objects ---- */

/* MAX_VALUES: msgpack values one frame may hold outside packed integer arrays. Each costs
 * a msgpack_object (24 bytes; a map entry two), while a nil or a small int takes one byte
 * of the frame: without a bound a 64 MiB frame of nils would cost 1.5 GB. 2^20 values (at
 * most ~48 MB) is far above any frame of the protocol (ids are packed, logits are bin). */
enum { MAX_DEPTH = 64, PACK_MIN = 16, MAX_VALUES = 1 << 20 };

typedef struct parser {
    const unsigned char *p, *end;
    msgpack_zone *z;
    const char *err;
    size_t values;       /* what is left of MAX_VALUES */
} parser;

/* Take n values (array elements, or map keys and values) from the frame's budget. */
static int take_values(parser *ps, size_t n)
{
    if (n > ps->values) {
        ps->err = "more than 1048576 values in one frame";
        return -1;
    }
    ps->values -= n;
    return 0;
}

static void *zalloc(parser *ps, size_t n)
{
    void *q = msgpack_zone_malloc(ps->z, n ? n : 1);
    if (!q) phi3_die("out of memory");
    return q;
}

static uint64_t rd(parser *ps, int n)
{
    uint64_t v = be(ps->p, n);
    ps->p += n;
    return v;
}

/* Length in bytes of the integer at q (a msgpack int of any width), 0 if q is not an
 * int representable as int64. */
static size_t int_len(const unsigned char *q, const unsigned char *end)
{
    unsigned b = q[0];
    size_t n = b <= 0x7f || b >= 0xe0 ? 1 : b == 0xcc || b == 0xd0 ? 2 : b == 0xcd || b == 0xd1 ? 3 :
               b == 0xce || b == 0xd2 ? 5 : b == 0xcf || b == 0xd3 ? 9 : 0;
    if (n == 0 || (size_t)(end - q) < n) return 0;
    if (b == 0xcf && q[1] >= 0x80) return 0;         /* > INT64_MAX */
    return n;
}

static int64_t int_at(const unsigned char *q)
{
    unsigned b = q[0];
    if (b <= 0x7f) return b;
    if (b >= 0xe0) return (int8_t)b;
    switch (b) {
    case 0xcc: return q[1];
    case 0xcd: return (int64_t)be(q + 1, 2);
    case 0xce: return (int64_t)be(q + 1, 4);
    case 0xcf: return (int64_t)be(q + 1, 8);
    case 0xd0: return (int8_t)q[1];
    case 0xd1: return (int16_t)be(q + 1, 2);
    case 0xd2: return (int32_t)be(q + 1, 4);
    default: return (int64_t)be(q + 1, 8);
    }
}

static int parse_obj(parser *ps, msgpack_object *o, int depth);

static int parse_array(parser *ps, msgpack_object *o, uint32_t n, int depth)
{
    /* An array of integers only (a tokens frame's ids) stays packed: a msgpack_object
     * per element would cost 24 bytes for an id that takes 1 to 5. */
    if (n >= PACK_MIN) {
        const unsigned char *q = ps->p;
        uint32_t i = 0;
        for (size_t k; i < n && (k = int_len(q, ps->end)) > 0; i++) q += k;
        if (i == n) {
            o->type = FRAME_OBJECT_INTS;
            o->via.bin.size = n;
            o->via.bin.ptr = (const char *)ps->p;
            ps->p = q;
            return 0;
        }
    }
    if (take_values(ps, n)) return -1;
    o->type = MSGPACK_OBJECT_ARRAY;
    o->via.array.size = n;
    o->via.array.ptr = n ? zalloc(ps, sizeof(msgpack_object) * n) : NULL;
    for (uint32_t i = 0; i < n; i++)
        if (parse_obj(ps, &o->via.array.ptr[i], depth + 1)) return -1;
    return 0;
}

static int parse_map(parser *ps, msgpack_object *o, uint32_t n, int depth)
{
    if (take_values(ps, 2 * (size_t)n)) return -1;
    o->type = MSGPACK_OBJECT_MAP;
    o->via.map.size = n;
    o->via.map.ptr = n ? zalloc(ps, sizeof(msgpack_object_kv) * n) : NULL;
    for (uint32_t i = 0; i < n; i++)
        if (parse_obj(ps, &o->via.map.ptr[i].key, depth + 1) ||
            parse_obj(ps, &o->via.map.ptr[i].val, depth + 1))
            return -1;
    return 0;
}

static void raw(parser *ps, msgpack_object *o, msgpack_object_type t, size_t n)
{
    o->type = t;
    o->via.str.size = (uint32_t)n;           /* str and bin share the layout */
    o->via.str.ptr = (const char *)ps->p;
    ps->p += n;
}

/* An ext of n data bytes: the type byte, then the data. */
static void ext(parser *ps, msgpack_object *o, size_t n)
{
    o->type = MSGPACK_OBJECT_EXT;
    o->via.ext.type = (int8_t)*ps->p++;
    o->via.ext.size = (uint32_t)n;
    o->via.ext.ptr = (const char *)ps->p;
    ps->p += n;
}

static int parse_obj(parser *ps, msgpack_object *o, int depth)
{
    if (depth > MAX_DEPTH) { ps->err = "nesting too deep"; return -1; }
    if (ps->p >= ps->end) { ps->err = "malformed"; return -1; }
    unsigned b = *ps->p++;
    float f;
    double d;
    uint32_t u;
    uint64_t v;
    if (b <= 0x7f) { o->type = MSGPACK_OBJECT_POSITIVE_INTEGER; o->via.u64 = b; return 0; }
    if (b >= 0xe0) { o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER; o->via.i64 = (int8_t)b; return 0; }
    if (b <= 0x8f) return parse_map(ps, o, b & 0x0f, depth);
    if (b <= 0x9f) return parse_array(ps, o, b & 0x0f, depth);
    if (b <= 0xbf) { raw(ps, o, MSGPACK_OBJECT_STR, b & 0x1f); return 0; }
    switch (b) {
    case 0xc0: o->type = MSGPACK_OBJECT_NIL; return 0;
    case 0xc2: case 0xc3: o->type = MSGPACK_OBJECT_BOOLEAN; o->via.boolean = b == 0xc3; return 0;
    case 0xc4: case 0xc5: case 0xc6:
        raw(ps, o, MSGPACK_OBJECT_BIN, (size_t)rd(ps, b == 0xc4 ? 1 : b == 0xc5 ? 2 : 4));
        return 0;
    case 0xd9: case 0xda: case 0xdb:
        raw(ps, o, MSGPACK_OBJECT_STR, (size_t)rd(ps, b == 0xd9 ? 1 : b == 0xda ? 2 : 4));
        return 0;
    case 0xc7: case 0xc8: case 0xc9:
        ext(ps, o, (size_t)rd(ps, b == 0xc7 ? 1 : b == 0xc8 ? 2 : 4));
        return 0;
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
        ext(ps, o, (size_t)1 << (b - 0xd4));
        return 0;
    case 0xca:
        u = (uint32_t)rd(ps, 4);
        memcpy(&f, &u, 4);
        o->type = MSGPACK_OBJECT_FLOAT32;
        o->via.f64 = f;
        return 0;
    case 0xcb:
        v = rd(ps, 8);
        memcpy(&d, &v, 8);
        o->type = MSGPACK_OBJECT_FLOAT64;
        o->via.f64 = d;
        return 0;
    case 0xcc: case 0xcd: case 0xce: case 0xcf:
        o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
        o->via.u64 = rd(ps, b == 0xcc ? 1 : b == 0xcd ? 2 : b == 0xce ? 4 : 8);
        return 0;
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
        int n = b == 0xd0 ? 1 : b == 0xd1 ? 2 : b == 0xd2 ? 4 : 8;
        const unsigned char *q = ps->p - 1;
        ps->p += n;
        int64_t x = int_at(q);
        if (x >= 0) { o->type = MSGPACK_OBJECT_POSITIVE_INTEGER; o->via.u64 = (uint64_t)x; }
        else { o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER; o->via.i64 = x; }
        return 0;
    }
    case 0xdc: case 0xdd: return parse_array(ps, o, (uint32_t)rd(ps, b == 0xdc ? 2 : 4), depth);
    case 0xde: case 0xdf: return parse_map(ps, o, (uint32_t)rd(ps, b == 0xde ? 2 : 4), depth);
    }
    ps->err = "malformed";
    return -1;
}

/* Frames at least this big take the reader's buffer with them instead of a copy. */
enum { OWN_MIN = 1 << 20 };

/* Turn the complete frame at buf[start, start+len) into *out. */
static int decode(frame_reader *r, size_t len, frame *out)
{
    long no = r->count + 1;
    msgpack_zone *z = msgpack_zone_new(len < 65536 ? len + 256 : 65536);
    if (!z) phi3_die("out of memory");
    unsigned char *bytes, *own = NULL;
    if (len >= OWN_MIN) {
        /* The frame keeps the buffer (no second copy of a big frame); what follows it
         * moves to a fresh buffer. */
        size_t rest = r->len - r->start - len;
        size_t ncap = rest > 65536 ? rest : 65536;
        unsigned char *nb = xmalloc(ncap);
        memcpy(nb, r->buf + r->start + len, rest);
        if (r->start > 0) memmove(r->buf, r->buf + r->start, len);
        own = xrealloc(r->buf, len);
        bytes = own;
        r->buf = nb;
        r->cap = ncap;
        r->len = rest;
        r->start = 0;
    } else {
        bytes = msgpack_zone_malloc(z, len);
        if (!bytes) phi3_die("out of memory");
        memcpy(bytes, r->buf + r->start, len);
        r->start += len;
    }
    parser ps = {bytes, bytes + len, z, NULL, MAX_VALUES};
    msgpack_object obj;
    if (parse_obj(&ps, &obj, 0) || ps.p != ps.end) {
        snprintf(r->err, sizeof r->err, "frame %ld: invalid msgpack (%s)", no,
                 ps.err ? ps.err : "malformed");
        goto bad;
    }
    if (obj.type != MSGPACK_OBJECT_MAP) {
        snprintf(r->err, sizeof r->err, "frame %ld: top-level value is %s, not a map", no, kind_name(obj.type));
        goto bad;
    }
    const msgpack_object *t = NULL;
    for (uint32_t i = 0; i < obj.via.map.size; i++) {
        const msgpack_object_kv *kv = &obj.via.map.ptr[i];
        if (obj_str_eq(&kv->key, "type")) { t = &kv->val; break; }
    }
    if (!t) {
        snprintf(r->err, sizeof r->err, "frame %ld: map has no \"type\" key", no);
        goto bad;
    }
    if (t->type != MSGPACK_OBJECT_STR) {
        snprintf(r->err, sizeof r->err, "frame %ld: \"type\" is %s, not a string", no, kind_name(t->type));
        goto bad;
    }
    if (!phi3_utf8_valid(t->via.str.ptr, t->via.str.size)) {
        snprintf(r->err, sizeof r->err, "frame %ld: \"type\" is not valid UTF-8", no);
        goto bad;
    }
    keyref dk;
    if (dup_key(&obj, &dk)) {
        snprintf(r->err, sizeof r->err, "frame %ld: duplicate key \"%.*s\"", no,
                 (int)(dk.n > 40 ? 40 : dk.n), dk.p);
        goto bad;
    }
    char *ty = msgpack_zone_malloc(z, t->via.str.size + 1);
    if (!ty) phi3_die("out of memory");
    memcpy(ty, t->via.str.ptr, t->via.str.size);
    ty[t->via.str.size] = 0;
    out->root = obj;
    out->zone = z;
    out->own = own;
    out->type = ty;
    out->index = no;
    r->count = no;
    r->last_p = bytes;
    r->last = len;
    return 1;
bad:
    msgpack_zone_free(z);
    free(own);
    return -1;
}

int fr_next(frame_reader *r, frame *out)
{
    memset(out, 0, sizeof *out);
    r->last = 0;
    for (;;) {
        size_t have = r->len - r->start;
        if (have > 0) {
            size_t used;
            char why[200];
            if (r->scan_pending == 0) { r->scan_i = 0; r->scan_pending = 1; }
            int s = scan(r->buf + r->start, have, r->max, &used, why, sizeof why, &r->scan_i,
                         &r->scan_pending);
            if (s != SCAN_MORE) r->scan_pending = 0;    /* the next frame starts afresh */
            if (s == SCAN_DONE) return decode(r, used, out);
            if (s == SCAN_BAD) {
                snprintf(r->err, sizeof r->err, "frame %ld: %s", r->count + 1, why);
                return -1;
            }
        }
        if (r->eof) {
            if (have == 0) return 0;
            snprintf(r->err, sizeof r->err, "frame %ld: truncated frame (end of input after %zu bytes)",
                     r->count + 1, have);
            return -1;
        }
        /* Need more: compact, grow within the cap, read. */
        if (r->start > 0) {
            memmove(r->buf, r->buf + r->start, have);
            r->len = have;
            r->start = 0;
        }
        if (r->len == r->cap) {
            size_t nc = r->cap * 2;
            if (nc > r->max + 1) nc = r->max + 1;
            if (nc <= r->cap) {
                snprintf(r->err, sizeof r->err, "frame %ld: frame larger than the cap of %zu bytes",
                         r->count + 1, r->max);
                return -1;
            }
            r->buf = xrealloc(r->buf, nc);
            r->cap = nc;
        }
        ssize_t n = read(r->fd, r->buf + r->len, r->cap - r->len);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 2;   /* non-blocking fd */
            snprintf(r->err, sizeof r->err, "frame %ld: read error: %s", r->count + 1, strerror(errno));
            return -1;
        }
        if (n == 0) r->eof = 1;
        r->len += (size_t)n;
    }
}

void fr_raw(const frame_reader *r, const void **p, size_t *len)
{
    *p = r->last ? r->last_p : (const void *)"";
    *len = r->last;
}

void frame_free(frame *f)
{
    if (f && f->zone) msgpack_zone_free(f->zone);
    if (f) free(f->own);
    if (f) memset(f, 0, sizeof *f);
}

bool obj_str_eq(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n && memcmp(o->via.str.ptr, s, n) == 0;
}

const msgpack_object *frame_get(const frame *f, const char *key)
{
    const msgpack_object_map *m = &f->root.via.map;
    for (uint32_t i = 0; i < m->size; i++)
        if (obj_str_eq(&m->ptr[i].key, key)) return &m->ptr[i].val;
    return NULL;
}

int frame_str(const frame *f, const char *key, const char **s, size_t *len)
{
    const msgpack_object *o = frame_get(f, key);
    if (!o) return 0;
    if (o->type != MSGPACK_OBJECT_STR) return -1;
    *s = o->via.str.ptr;
    *len = o->via.str.size;
    return 1;
}

int frame_int(const frame *f, const char *key, int64_t *v)
{
    const msgpack_object *o = frame_get(f, key);
    if (!o) return 0;
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) { *v = o->via.i64; return 1; }
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) { *v = (int64_t)o->via.u64; return 1; }
    return -1;
}

int frame_bool(const frame *f, const char *key, bool *v)
{
    const msgpack_object *o = frame_get(f, key);
    if (!o) return 0;
    if (o->type != MSGPACK_OBJECT_BOOLEAN) return -1;
    *v = o->via.boolean;
    return 1;
}

int frame_bin(const frame *f, const char *key, const void **p, size_t *len)
{
    const msgpack_object *o = frame_get(f, key);
    if (!o) return 0;
    if (o->type != MSGPACK_OBJECT_BIN) return -1;
    *p = o->via.bin.ptr;
    *len = o->via.bin.size;
    return 1;
}

void obj_ints_iter(const msgpack_object *o, frame_int_iter *it)
{
    memset(it, 0, sizeof *it);
    it->raw = (const unsigned char *)o->via.bin.ptr;
    it->n = o->via.bin.size;
}

int frame_ints_iter(const frame *f, const char *key, frame_int_iter *it, size_t *n,
                    size_t *bad_index)
{
    const msgpack_object *o = frame_get(f, key);
    memset(it, 0, sizeof *it);
    *n = 0;
    if (!o) return 0;
    if (o->type == FRAME_OBJECT_INTS) {
        obj_ints_iter(o, it);
        *n = it->n;
        return 1;
    }
    if (o->type != MSGPACK_OBJECT_ARRAY) { if (bad_index) *bad_index = (size_t)-1; return -1; }
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        const msgpack_object *e = &o->via.array.ptr[i];
        if (!(e->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ||
              (e->type == MSGPACK_OBJECT_POSITIVE_INTEGER && e->via.u64 <= INT64_MAX))) {
            if (bad_index) *bad_index = i;
            return -1;
        }
    }
    it->arr = o->via.array.ptr;
    it->n = *n = o->via.array.size;
    return 1;
}

bool frame_int_next(frame_int_iter *it, int64_t *v)
{
    if (it->i >= it->n) return false;
    if (it->raw) {
        *v = int_at(it->raw);
        it->raw += int_len(it->raw, it->raw + 9);
    } else {
        const msgpack_object *e = &it->arr[it->i];
        *v = e->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ? e->via.i64 : (int64_t)e->via.u64;
    }
    it->i++;
    return true;
}

int frame_ints(const frame *f, const char *key, int64_t **out, size_t *n, size_t *bad_index)
{
    frame_int_iter it;
    *out = NULL;
    int r = frame_ints_iter(f, key, &it, n, bad_index);
    if (r <= 0) { *n = 0; return r; }
    int64_t *v = xmalloc(*n * sizeof *v);
    for (size_t i = 0; frame_int_next(&it, &v[i]); i++) {}
    *out = v;
    return 1;
}

/* ---- writer ---- */

void fw_init(frame_writer *w, int fd)
{
    w->fd = fd;
    if (fd >= 0) widen_pipe(fd);
    msgpack_sbuffer_init(&w->buf);
    msgpack_packer_init(&w->pk, &w->buf, msgpack_sbuffer_write);
}

void fw_destroy(frame_writer *w) { msgpack_sbuffer_destroy(&w->buf); }

static void pack_str(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

void fw_begin(frame_writer *w, const char *type, uint32_t nkeys)
{
    w->buf.size = 0;
    msgpack_pack_map(&w->pk, nkeys + 1);
    pack_str(&w->pk, "type", 4);
    pack_str(&w->pk, type, strlen(type));
}

void fw_key(frame_writer *w, const char *key) { pack_str(&w->pk, key, strlen(key)); }

void fw_str(frame_writer *w, const char *key, const char *s, size_t len)
{
    fw_key(w, key);
    pack_str(&w->pk, s, len);
}

void fw_int(frame_writer *w, const char *key, int64_t v)
{
    fw_key(w, key);
    msgpack_pack_int64(&w->pk, v);
}

void fw_bool(frame_writer *w, const char *key, bool v)
{
    fw_key(w, key);
    if (v) msgpack_pack_true(&w->pk); else msgpack_pack_false(&w->pk);
}

void fw_bin(frame_writer *w, const char *key, const void *p, size_t len)
{
    fw_key(w, key);
    msgpack_pack_bin(&w->pk, len);
    msgpack_pack_bin_body(&w->pk, p, len);
}

void fw_ints(frame_writer *w, const char *key, const int32_t *v, size_t n)
{
    fw_key(w, key);
    msgpack_pack_array(&w->pk, n);
    for (size_t i = 0; i < n; i++) msgpack_pack_int32(&w->pk, v[i]);
}

int fw_end(frame_writer *w)
{
    int rc = write_all(w->fd, w->buf.data, w->buf.size);
    w->buf.size = 0;
    return rc;
}

void fw_end_or_exit(frame_writer *w)
{
    if (fw_end(w) == 0) return;
    if (errno == EPIPE) exit(0);
    phi3_die("write error: %s", strerror(errno));
}

void fw_tokens(frame_writer *w, const int32_t *ids, size_t n, int64_t pos)
{
    fw_begin(w, "tokens", pos >= 0 ? 2 : 1);
    fw_ints(w, "ids", ids, n);
    if (pos >= 0) fw_int(w, "pos", pos);
    fw_end_or_exit(w);
}

void fw_logits(frame_writer *w, int64_t pos, const float *data, size_t n)
{
    fw_begin(w, "logits", 2);
    fw_int(w, "pos", pos);
    /* float32 little-endian: the host order on every machine we build for. */
    fw_bin(w, "data", data, n * sizeof(float));
    fw_end_or_exit(w);
}

void fw_text(frame_writer *w, const char *s, size_t len, bool special)
{
    fw_begin(w, "text", 2);
    fw_str(w, "text", s, len);
    fw_bool(w, "special", special);
    fw_end_or_exit(w);
}

void fw_end_frame(frame_writer *w, const char *reason)
{
    fw_begin(w, "end", 1);
    fw_str(w, "reason", reason, strlen(reason));
    fw_end_or_exit(w);
}

void fw_forward_end(frame_writer *w, const frame *f)
{
    const char *why = "stop";
    size_t wl = 4;
    if (frame_str(f, "reason", &why, &wl) != 1) { why = "stop"; wl = 4; }
    fw_begin(w, "end", 1);
    fw_str(w, "reason", why, wl);
    fw_end_or_exit(w);
}
