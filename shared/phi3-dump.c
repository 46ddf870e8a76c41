/* phi3-dump: any phi3 stream -> one JSON object per line, and back with -r.
 * logits.data (bin of float32) becomes an array of numbers; any other bin becomes
 * {"$bin": "<base64>"} so that -r restores it exactly. */
#include "shared/stream.h"
#include "shared/util.h"
#include "tok/tokenizer.h"
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char USAGE[] =
    "usage: phi3-dump [--top K [-m DIR]] [--max-frame BYTES] [FILE] < stream > json-lines\n"
    "       phi3-dump -r [FILE] < json-lines > stream\n"
    "FILE (or stdin when none or -) is the input.\n"
    "Shows a phi3 msgpack stream as JSON lines (one object per frame), or with -r turns\n"
    "JSON lines back into frames. logits.data is shown as an array of numbers (null for\n"
    "NaN/Inf); other binary values as {\"$bin\": base64}. --top K replaces logits.data by\n"
    "the K best ids (with their token pieces when -m DIR or $PHI3_MODEL names a model).\n";

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_encode(const unsigned char *p, size_t n)
{
    char *out = xmalloc((n + 2) / 3 * 4 + 1), *o = out;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        *o++ = B64[v >> 18 & 63];
        *o++ = B64[v >> 12 & 63];
        *o++ = i + 1 < n ? B64[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? B64[v & 63] : '=';
    }
    *o = 0;
    return out;
}

/* Returns decoded length, or -1 on a malformed string. */
static long b64_decode(const char *s, size_t n, unsigned char *out)
{
    if (n % 4) return -1;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        uint32_t v = 0;
        int pad = 0;
        for (int j = 0; j < 4; j++) {
            char c = s[i + j];
            const char *q = c ? strchr(B64, c) : NULL;
            if (c == '=' && i + 4 == n && j >= 2) { pad++; v <<= 6; continue; }
            if (!q || pad) return -1;
            v = v << 6 | (uint32_t)(q - B64);
        }
        out[o++] = (unsigned char)(v >> 16);
        if (pad < 2) out[o++] = (unsigned char)(v >> 8);
        if (pad < 1) out[o++] = (unsigned char)v;
    }
    return (long)o;
}

/* ---- msgpack -> JSON ----
 * Written straight to stdout in pieces (never a JSON tree: a tokens frame of 17M ids
 * would take gigabytes as jansson values), after a check pass over the frame so that a
 * frame that cannot be shown gives an error before any of its line is written. The
 * format is jansson's compact dump: strings escaped as \" \\ \b \f \n \r \t and \u00XX
 * (upper-case hex) for other controls, UTF-8 as is; reals printed with 9 significant
 * digits, with ".0" when that looks like an integer, and the exponent without "+" or
 * leading zeros. */

typedef struct jout { char *p; size_t n, cap; } jout;

static void jflush(jout *o)
{
    if (o->n && write_all(1, o->p, o->n) != 0) {
        int e = errno;
        free(o->p);
        if (e == EPIPE) exit(0);
        phi3_die("write error: %s", strerror(e));
    }
    o->n = 0;
}

static void jraw(jout *o, const char *s, size_t n)
{
    if (o->n + n > o->cap) {
        if (o->n >= (1 << 20)) jflush(o);
        if (o->n + n > o->cap) {
            o->cap = o->n + n > (1 << 20) ? o->n + n : 1 << 20;
            o->p = xrealloc(o->p, o->cap);
        }
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

static void jstr(jout *o, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    jraw(o, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char u[7];
        if (c == '"') esc = "\\\"";
        else if (c == '\\') esc = "\\\\";
        else if (c == '\b') esc = "\\b";
        else if (c == '\f') esc = "\\f";
        else if (c == '\n') esc = "\\n";
        else if (c == '\r') esc = "\\r";
        else if (c == '\t') esc = "\\t";
        else if (c < 0x20) {
            memcpy(u, "\\u00", 4);
            u[4] = hex[c >> 4];
            u[5] = hex[c & 15];
            u[6] = 0;
            esc = u;
        }
        if (!esc) continue;
        jraw(o, s + run, i - run);
        jraw(o, esc, strlen(esc));
        run = i + 1;
    }
    jraw(o, s + run, n - run);
    jraw(o, "\"", 1);
}

static void jreal(jout *o, double v)
{
    if (!isfinite(v)) { jraw(o, "null", 4); return; }
    char b[48];
    int n = snprintf(b, sizeof b, "%.9g", v);
    if (!strchr(b, '.') && !strchr(b, 'e')) { memcpy(b + n, ".0", 3); n += 2; }
    char *e = strchr(b, 'e');
    if (e) {                         /* e+30 -> e30, e-05 -> e-5 */
        char *d = e + 1, *q = d;
        if (*q == '+') q++;
        else if (*q == '-') { d++; q++; }
        while (*q == '0' && q[1]) q++;
        memmove(d, q, strlen(q) + 1);
        n = (int)strlen(b);
    }
    jraw(o, b, (size_t)n);
}

static void jint(jout *o, int64_t v)
{
    char b[32];
    int n = snprintf(b, sizeof b, "%lld", (long long)v);
    jraw(o, b, (size_t)n);
}

/* The shortest decimal that reads back as the same float32, as a double: printed with 9
 * significant digits it shows as that short decimal (0.1, not 0.100000001). */
static double short_float(float f)
{
    char b[32];
    for (int prec = 6; prec < 9; prec++) {
        snprintf(b, sizeof b, "%.*g", prec, (double)f);
        if (strtof(b, NULL) == f) return strtod(b, NULL);
    }
    return (double)f;
}

/* Check pass: 0 if o can be shown, else -1 with the reason in err. */
static int check(const msgpack_object *o, int logits_data, char *err, size_t errlen)
{
    switch (o->type) {
    case MSGPACK_OBJECT_STR:
        if (!phi3_utf8_valid(o->via.str.ptr, o->via.str.size)) {
            snprintf(err, errlen, "a string is not valid UTF-8");
            return -1;
        }
        return 0;
    case MSGPACK_OBJECT_BIN:
        if (logits_data && o->via.bin.size % 4) {
            snprintf(err, errlen, "logits data is %u bytes, not a multiple of 4", o->via.bin.size);
            return -1;
        }
        return 0;
    case MSGPACK_OBJECT_EXT:
        snprintf(err, errlen, "msgpack ext values are not part of the protocol");
        return -1;
    case MSGPACK_OBJECT_ARRAY:
        for (uint32_t i = 0; i < o->via.array.size; i++)
            if (check(&o->via.array.ptr[i], 0, err, errlen)) return -1;
        return 0;
    case MSGPACK_OBJECT_MAP:
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            if (kv->key.type != MSGPACK_OBJECT_STR) {
                snprintf(err, errlen, "a map key is not a string");
                return -1;
            }
            if (!phi3_utf8_valid(kv->key.via.str.ptr, kv->key.via.str.size)) {
                snprintf(err, errlen, "a map key is not valid UTF-8");
                return -1;
            }
            if (check(&kv->val, 0, err, errlen)) return -1;
        }
        return 0;
    default:
        return 0;
    }
}

static void show(jout *jo, const msgpack_object *o, int logits_data)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: jraw(jo, "null", 4); return;
    case MSGPACK_OBJECT_BOOLEAN: if (o->via.boolean) jraw(jo, "true", 4); else jraw(jo, "false", 5); return;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > INT64_MAX) jreal(jo, (double)o->via.u64);
        else jint(jo, (int64_t)o->via.u64);
        return;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: jint(jo, o->via.i64); return;
    case MSGPACK_OBJECT_FLOAT32: case MSGPACK_OBJECT_FLOAT64: jreal(jo, o->via.f64); return;
    case MSGPACK_OBJECT_STR: jstr(jo, o->via.str.ptr, o->via.str.size); return;
    case MSGPACK_OBJECT_BIN:
        if (logits_data) {
            jraw(jo, "[", 1);
            for (uint32_t i = 0; i + 4 <= o->via.bin.size; i += 4) {
                float f;
                memcpy(&f, o->via.bin.ptr + i, 4);
                if (i) jraw(jo, ",", 1);
                jreal(jo, isfinite(f) ? short_float(f) : NAN);
            }
            jraw(jo, "]", 1);
        } else {
            char *b = b64_encode((const unsigned char *)o->via.bin.ptr, o->via.bin.size);
            jraw(jo, "{\"$bin\":\"", 9);
            jraw(jo, b, strlen(b));
            jraw(jo, "\"}", 2);
            free(b);
        }
        return;
    case MSGPACK_OBJECT_ARRAY:
        jraw(jo, "[", 1);
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if (i) jraw(jo, ",", 1);
            show(jo, &o->via.array.ptr[i], 0);
        }
        jraw(jo, "]", 1);
        return;
    case MSGPACK_OBJECT_MAP:
        jraw(jo, "{", 1);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            if (i) jraw(jo, ",", 1);
            jstr(jo, o->via.map.ptr[i].key.via.str.ptr, o->via.map.ptr[i].key.via.str.size);
            jraw(jo, ":", 1);
            show(jo, &o->via.map.ptr[i].val, 0);
        }
        jraw(jo, "}", 1);
        return;
    case MSGPACK_OBJECT_EXT:
        return;                      /* refused by check */
    }
    if (o->type == FRAME_OBJECT_INTS) {
        frame_int_iter it;
        int64_t v;
        obj_ints_iter(o, &it);
        jraw(jo, "[", 1);
        for (size_t i = 0; frame_int_next(&it, &v); i++) {
            if (i) jraw(jo, ",", 1);
            jint(jo, v);
        }
        jraw(jo, "]", 1);
    }
}

typedef struct { int id; float v; } scored;

/* The K largest logits, best first (K small: insertion into a sorted array). */
static void show_top(jout *jo, const void *p, size_t len, int k, const tok *tk)
{
    size_t n = len / 4;
    scored *best = xmalloc((size_t)k * sizeof *best);
    int have = 0;
    for (size_t i = 0; i < n; i++) {
        float f;
        memcpy(&f, (const char *)p + 4 * i, 4);
        if (isnan(f)) continue;
        if (have == k && !(f > best[k - 1].v)) continue;
        int j = have < k ? have++ : k - 1;
        while (j > 0 && best[j - 1].v < f) { best[j] = best[j - 1]; j--; }
        best[j] = (scored){(int)i, f};
    }
    jraw(jo, "[", 1);
    for (int i = 0; i < have; i++) {
        if (i) jraw(jo, ",", 1);
        jraw(jo, "{\"id\":", 6);
        jint(jo, best[i].id);
        jraw(jo, ",\"logit\":", 9);
        jreal(jo, isfinite(best[i].v) ? short_float(best[i].v) : NAN);
        size_t plen = 0;
        const char *piece = tk ? tok_piece(tk, best[i].id, &plen) : NULL;
        if (piece) {
            jraw(jo, ",\"piece\":", 9);
            jstr(jo, piece, plen);
        }
        jraw(jo, "}", 1);
    }
    jraw(jo, "]", 1);
    free(best);
}

static int dump(size_t max_frame, int top, const tok *tk)
{
    static frame_reader *r;
    static frame f;
    static jout jo;
    r = fr_open(0, max_frame);
    int rc;
    while ((rc = fr_next(r, &f)) == 1) {
        char err[160] = "";
        int is_logits = strcmp(f.type, "logits") == 0;
        const msgpack_object_map *m = &f.root.via.map;
        if (check(&f.root, 0, err, sizeof err))
            phi3_die("frame %ld: cannot show as JSON: %s", f.index, err);
        for (uint32_t i = 0; i < m->size; i++) {
            const msgpack_object_kv *kv = &m->ptr[i];
            if (is_logits && obj_str_eq(&kv->key, "data") && kv->val.type == MSGPACK_OBJECT_BIN &&
                !(top > 0) && check(&kv->val, 1, err, sizeof err))
                phi3_die("frame %ld: cannot show as JSON: %s", f.index, err);
        }
        jraw(&jo, "{\"type\":", 8);
        jstr(&jo, f.type, strlen(f.type));
        for (uint32_t i = 0; i < m->size; i++) {
            const msgpack_object_kv *kv = &m->ptr[i];
            if (obj_str_eq(&kv->key, "type")) continue;
            int data = is_logits && obj_str_eq(&kv->key, "data") && kv->val.type == MSGPACK_OBJECT_BIN;
            jraw(&jo, ",", 1);
            if (data && top > 0) {
                jraw(&jo, "\"top\":", 6);
                show_top(&jo, kv->val.via.bin.ptr, kv->val.via.bin.size, top, tk);
            } else {
                jstr(&jo, kv->key.via.str.ptr, kv->key.via.str.size);
                jraw(&jo, ":", 1);
                show(&jo, &kv->val, data);
            }
        }
        jraw(&jo, "}\n", 2);
        jflush(&jo);
        frame_free(&f);
    }
    if (rc < 0) phi3_die("%s", fr_error(r));
    fr_close(r);
    free(jo.p);
    return 0;
}

/* ---- JSON -> msgpack ---- */

static int pack_json(msgpack_packer *pk, json_t *v, int logits_data, char *err, size_t errlen)
{
    switch (json_typeof(v)) {
    case JSON_NULL: msgpack_pack_nil(pk); return 0;
    case JSON_TRUE: msgpack_pack_true(pk); return 0;
    case JSON_FALSE: msgpack_pack_false(pk); return 0;
    case JSON_INTEGER: msgpack_pack_int64(pk, json_integer_value(v)); return 0;
    case JSON_REAL: msgpack_pack_double(pk, json_real_value(v)); return 0;
    case JSON_STRING:
        msgpack_pack_str(pk, json_string_length(v));
        msgpack_pack_str_body(pk, json_string_value(v), json_string_length(v));
        return 0;
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        if (logits_data) {
            float *d = xmalloc(n * sizeof *d + 1);
            for (size_t i = 0; i < n; i++) {
                json_t *e = json_array_get(v, i);
                if (json_is_number(e)) d[i] = (float)json_number_value(e);
                else if (json_is_null(e)) d[i] = NAN;
                else { free(d); snprintf(err, errlen, "logits data element %zu is not a number", i); return -1; }
            }
            msgpack_pack_bin(pk, n * 4);
            msgpack_pack_bin_body(pk, d, n * 4);
            free(d);
            return 0;
        }
        msgpack_pack_array(pk, n);
        for (size_t i = 0; i < n; i++)
            if (pack_json(pk, json_array_get(v, i), 0, err, errlen)) return -1;
        return 0;
    }
    case JSON_OBJECT: {
        json_t *b = json_object_get(v, "$bin");
        if (b && json_object_size(v) == 1) {
            if (!json_is_string(b)) { snprintf(err, errlen, "\"$bin\" is not a string"); return -1; }
            size_t n = json_string_length(b);
            unsigned char *d = xmalloc(n / 4 * 3 + 3);
            long len = b64_decode(json_string_value(b), n, d);
            if (len < 0) { free(d); snprintf(err, errlen, "\"$bin\" is not valid base64"); return -1; }
            msgpack_pack_bin(pk, (size_t)len);
            msgpack_pack_bin_body(pk, d, (size_t)len);
            free(d);
            return 0;
        }
        msgpack_pack_map(pk, json_object_size(v));
        const char *k;
        json_t *e;
        json_object_foreach(v, k, e) {
            msgpack_pack_str(pk, strlen(k));
            msgpack_pack_str_body(pk, k, strlen(k));
            if (pack_json(pk, e, 0, err, errlen)) return -1;
        }
        return 0;
    }
    }
    snprintf(err, errlen, "unknown JSON type");
    return -1;
}

static int undump(void)
{
    frame_writer w;
    fw_init(&w, 1);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long lineno = 0;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        size_t sp = strspn(line, " \t");
        if (line[sp] == 0) continue;
        json_error_t je;
        /* A duplicate key makes an invalid frame for every reader: refuse to write one. */
        json_t *j = json_loadb(line, (size_t)n, JSON_REJECT_DUPLICATES, &je);
        if (!j) phi3_die("line %ld: invalid JSON: %s (column %d)", lineno, je.text, je.column);
        json_t *t = json_object_get(j, "type");
        if (!json_is_object(j)) phi3_die("line %ld: not a JSON object", lineno);
        if (!t) phi3_die("line %ld: object has no \"type\"", lineno);
        if (!json_is_string(t)) phi3_die("line %ld: \"type\" is not a string", lineno);
        int is_logits = strcmp(json_string_value(t), "logits") == 0;
        w.buf.size = 0;
        /* "type" first, then the other keys in their order. */
        msgpack_pack_map(&w.pk, json_object_size(j));
        char err[160] = "";
        msgpack_pack_str(&w.pk, 4);
        msgpack_pack_str_body(&w.pk, "type", 4);
        pack_json(&w.pk, t, 0, err, sizeof err);
        const char *k;
        json_t *e;
        json_object_foreach(j, k, e) {
            if (strcmp(k, "type") == 0) continue;
            msgpack_pack_str(&w.pk, strlen(k));
            msgpack_pack_str_body(&w.pk, k, strlen(k));
            int data = is_logits && strcmp(k, "data") == 0 && json_is_array(e);
            if (pack_json(&w.pk, e, data, err, sizeof err)) phi3_die("line %ld: %s", lineno, err);
        }
        json_decref(j);
        if (w.buf.size > frame_cap())     /* every reader would refuse it */
            phi3_die("line %ld: a frame of %zu bytes is over the frame cap of %zu bytes", lineno,
                     w.buf.size, frame_cap());
        if (fw_end(&w) != 0) {            /* nothing left allocated (LeakSanitizer) */
            int we = errno;
            free(line);
            fw_destroy(&w);
            if (we == EPIPE) exit(0);
            phi3_die("write error: %s", strerror(we));
        }
    }
    if (ferror(stdin)) phi3_die("read error: %s", strerror(errno));
    free(line);
    fw_destroy(&w);
    return 0;
}

int main(int argc, char **argv)
{
    phi3_init("phi3-dump");
    static const struct option opts[] = {
        {"reverse", no_argument, 0, 'r'}, {"top", required_argument, 0, 'k'},
        {"model", required_argument, 0, 'm'}, {"max-frame", required_argument, 0, 'F'},
        {"help", no_argument, 0, 'h'}, {"version", no_argument, 0, 'V'}, {0, 0, 0, 0}};
    int reverse = 0, c;
    long top = 0, maxf = 0;
    const char *model = NULL;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":rk:m:F:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'r': reverse = 1; break;
        case 'k': if (parse_long(optarg, &top) || top < 1 || top > 1000000) phi3_usage_die("--top wants a count from 1, got '%s'", optarg); break;
        case 'm': model = optarg; break;
        case 'F': if (parse_long(optarg, &maxf) || maxf < 64) phi3_usage_die("--max-frame wants bytes >= 64, got '%s'", optarg); break;
        case 'h': fputs(USAGE, stdout); return 0;
        case 'V': printf("phi3-dump %s\n", PHI3_VERSION); return 0;
        default: phi3_bad_option(argv, c);
        }
    }
    phi3_input_operand(argc, argv, optind);
    if (reverse) return undump();
    tok *tk = NULL;
    const char *dir = phi3_model_dir(model);
    if (top > 0 && dir) {
        char err[256];
        tk = tok_load(dir, err, sizeof err);
        if (!tk) phi3_die("%s", err);
    }
    int rc = dump((size_t)maxf, (int)top, tk);
    tok_free(tk);
    return rc;
}
