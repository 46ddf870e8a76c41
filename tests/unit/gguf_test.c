/* gguf_test.c: the GGUF reader against files built byte by byte here (valid ones, then
 * one defect at a time: each must fail with its own message, never crash), the writer
 * read back, the SentencePiece merge order, the f16/bf16 rounding, the phi3 config. */
#include "embed/gguf.h"
#include "embed/model.h"
#include "embed/quant.h"
#include "embed/quantize_mix.h"
#include "shared/util.h"
#include "tok/tok_gguf.h"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/unit/tap.h"

/* ---- a byte builder, independent of the writer ---- */

typedef struct bb { uint8_t *p; size_t n, cap; } bb;

static void b_put(bb *b, const void *p, size_t n)
{
    if (b->n + n > b->cap) b->p = xrealloc(b->p, b->cap = (b->n + n) * 2 + 64);
    memcpy(b->p + b->n, p, n);
    b->n += n;
}
static void b_u32(bb *b, uint32_t v) { b_put(b, &v, 4); }     /* little-endian host */
static void b_u64(bb *b, uint64_t v) { b_put(b, &v, 8); }
static void b_str(bb *b, const char *s) { b_u64(b, strlen(s)); b_put(b, s, strlen(s)); }
static void b_pad(bb *b, size_t a) { while (b->n % a) b_put(b, "", 1); }

/* A file with two F32 tensors "a" [4] and "b" [2, 3], one u32 and one string key.
 * Knobs break one thing at a time. */
typedef struct knobs {
    uint32_t version, b_type, ndim_b, kv_type, align;
    uint64_t n_kv_extra, b_off, b_ne0, key_len_extra;
    int dup_key, dup_tensor, truncate, nested_depth, bool_val;
} knobs;

static bb build(const knobs *k)
{
    bb b = {0};
    b_put(&b, "GGUF", 4);
    b_u32(&b, k->version ? k->version : 3);
    b_u64(&b, 2);
    int nkv = 2 + (k->align != 0) + (k->nested_depth != 0) + (k->bool_val != 0);
    b_u64(&b, (uint64_t)nkv + k->n_kv_extra);
    b_str(&b, "x.count");
    b_u32(&b, k->kv_type ? k->kv_type : GGUF_U32);
    b_u32(&b, 7);
    if (k->key_len_extra) {
        b_u64(&b, 6 + k->key_len_extra);
        b_put(&b, "x.name", 6);
    } else b_str(&b, k->dup_key ? "x.count" : "x.name");
    b_u32(&b, GGUF_STR);
    b_str(&b, "hello");
    if (k->align) {
        b_str(&b, "general.alignment");
        b_u32(&b, GGUF_U32);
        b_u32(&b, k->align);
    }
    if (k->nested_depth) {
        b_str(&b, "x.nested");
        b_u32(&b, GGUF_ARR);
        for (int d = 1; d < k->nested_depth; d++) {
            b_u32(&b, GGUF_ARR);
            b_u64(&b, 1);
        }
        b_u32(&b, GGUF_U32);
        b_u64(&b, 1);
        b_u32(&b, 5);
    }
    if (k->bool_val) {
        b_str(&b, "x.flag");
        b_u32(&b, GGUF_BOOL);
        b_put(&b, &(uint8_t){(uint8_t)(k->bool_val - 1)}, 1);
    }
    uint64_t al = k->align ? k->align : 32;
    b_str(&b, "a");
    b_u32(&b, 1);
    b_u64(&b, 4);
    b_u32(&b, GGML_F32);
    b_u64(&b, 0);
    b_str(&b, k->dup_tensor ? "a" : "b");
    b_u32(&b, k->ndim_b ? k->ndim_b : 2);
    for (uint32_t d = 0; d < (k->ndim_b ? k->ndim_b : 2); d++) b_u64(&b, d == 0 ? (k->b_ne0 ? k->b_ne0 : 3) : 2);
    b_u32(&b, k->b_type);
    b_u64(&b, k->b_off ? k->b_off : (16 + al - 1) / al * al);
    b_pad(&b, al);
    float a[4] = {1, 2, 3, 4}, bv[6] = {-1, -2, -3, -4, -5, -6};
    b_put(&b, a, sizeof a);
    b_pad(&b, al);
    b_put(&b, bv, sizeof bv);
    if (k->truncate) b.n -= (size_t)k->truncate;
    return b;
}

static int parse_err(const knobs *k, const char *want)
{
    bb b = build(k);
    gguf_file g;
    char err[512] = "";
    int rc = gguf_parse(b.p, b.n, &g, err, sizeof err);
    if (rc == 0) gguf_close(&g);
    int good = rc == -1 && strstr(err, want) != NULL;
    if (!good) printf("#   rc %d err '%s', wanted '%s'\n", rc, err, want);
    free(b.p);
    return good;
}

static void reader_tests(void)
{
    knobs k0 = {0};
    bb b = build(&k0);
    gguf_file g;
    char err[512];
    ok(gguf_parse(b.p, b.n, &g, err, sizeof err) == 0, "a valid file parses (%s)", g.n_t ? "" : err);
    const gguf_tensor *ta = gguf_find(&g, "a"), *tb = gguf_find(&g, "b");
    ok(ta && tb && ta->nbytes == 16 && tb->nbytes == 24 && tb->ne[0] == 3 && tb->ne[1] == 2 && tb->ndim == 2,
       "tensors found with their shapes (innermost first) and sizes");
    ok(tb && ((const float *)tb->data)[5] == -6 && ((const float *)ta->data)[0] == 1 && g.data_off % 32 == 0,
       "tensor data in place, data section aligned to 32");
    int64_t iv = 0;
    const char *s = NULL;
    size_t sl = 0;
    ok(gguf_get_int(&g, "x.count", 0, 10, &iv, err, sizeof err) == 1 && iv == 7, "integer getter");
    ok(gguf_get_int(&g, "x.count", 0, 5, &iv, err, sizeof err) == -1 && strstr(err, "x.count"),
       "integer out of range names the key: %s", err);
    ok(gguf_get_str(&g, "x.name", &s, &sl, err, sizeof err) == 1 && sl == 5 && !memcmp(s, "hello", 5), "string getter");
    ok(gguf_get_str(&g, "x.count", &s, &sl, err, sizeof err) == -1, "a string getter on a u32 is an error");
    ok(gguf_get_int(&g, "absent", 0, 1, &iv, err, sizeof err) == 0 && !gguf_find(&g, "c"), "absent key / tensor");
    gguf_close(&g);

    /* every truncation of the valid file is an error, never a read past the end */
    int all = 1;
    for (size_t n = 0; n < b.n; n++) {
        uint8_t *cp = xmalloc(n ? n : 1);
        memcpy(cp, b.p, n);
        char e2[512] = "";
        int rc = gguf_parse(cp, n, &g, e2, sizeof e2);
        if (rc == 0) gguf_close(&g);
        if (rc != -1 || !e2[0]) all = 0;
        free(cp);
    }
    ok(all, "each of the %zu truncations fails with a message", b.n);
    free(b.p);

    ok(parse_err(&(knobs){.version = 1}, "version 1 is not supported"), "GGUF v1");
    ok(parse_err(&(knobs){.version = 3u << 24}, "big-endian"), "big-endian file");
    ok(parse_err(&(knobs){.version = 9}, "unknown GGUF version 9"), "unknown version");
    ok(parse_err(&(knobs){.n_kv_extra = 1ull << 40}, "metadata count"), "huge metadata count: no allocation");
    ok(parse_err(&(knobs){.key_len_extra = 1ull << 62}, "exceeds"), "huge key length");
    ok(parse_err(&(knobs){.key_len_extra = 40}, "metadata"), "key length past the end");
    ok(parse_err(&(knobs){.dup_key = 1}, "x.count: appears twice"), "duplicate key");
    ok(parse_err(&(knobs){.dup_tensor = 1}, "tensor a: appears twice"), "duplicate tensor");
    ok(parse_err(&(knobs){.kv_type = 13}, "unknown value type 13"), "unknown value type");
    ok(parse_err(&(knobs){.bool_val = 3}, "bool value 2"), "bool other than 0/1");
    ok(parse_err(&(knobs){.nested_depth = 5}, "nested deeper"), "arrays nested too deep");
    {
        knobs k = {.nested_depth = 3};
        bb x = build(&k);
        ok(gguf_parse(x.p, x.n, &g, err, sizeof err) == 0 && gguf_get(&g, "x.nested")->n == 1,
           "arrays of arrays (depth 3) are read");
        gguf_close(&g);
        free(x.p);
    }
    ok(parse_err(&(knobs){.align = 24}, "not a power of two"), "alignment 24");
    ok(parse_err(&(knobs){.align = 64, .b_off = 32}, "not a multiple of the alignment 64"),
       "offset off the file's alignment");
    ok(parse_err(&(knobs){.b_off = 1ull << 60}, "beyond the data section"), "offset past the end");
    ok(parse_err(&(knobs){.truncate = 4}, "tensor b: bytes"), "last tensor cut short");
    ok(parse_err(&(knobs){.b_type = 16}, "tensor b: type IQ2_XXS is not supported"), "IQ type named");
    ok(parse_err(&(knobs){.b_type = 77}, "tensor b: type type 77 is not supported"), "unknown type number");
    ok(parse_err(&(knobs){.b_type = GGML_Q8_0}, "3 columns are not whole Q8_0 blocks of 32"), "partial block");
    ok(parse_err(&(knobs){.ndim_b = 5}, "5 dimensions"), "5 dimensions");
    ok(parse_err(&(knobs){.b_ne0 = 1ull << 62, .ndim_b = 3}, "shape too large"), "dimension product overflow");
    {
        bb x = build(&k0);
        x.p[0] = 'X';
        ok(gguf_parse(x.p, x.n, &g, err, sizeof err) == -1 && strstr(err, "no GGUF magic"), "bad magic");
        free(x.p);
    }
    {
        /* two tensors over the same bytes */
        knobs k = {.b_off = 0, .b_ne0 = 2, .ndim_b = 1};
        bb x = build(&k);
        /* b_off 0 means "default": patch b's offset field (last 8 bytes of the infos) */
        size_t infos_end = 0;
        for (size_t i = 0; i + 1 < x.n; i++)
            if (x.p[i] == 'b' && x.p[i - 8] == 1) { infos_end = i + 1 + 4 + 8 + 4; break; }
        memset(x.p + infos_end, 0, 8);
        ok(gguf_parse(x.p, x.n, &g, err, sizeof err) == -1 && strstr(err, "overlap"), "overlapping tensors: %s", err);
        free(x.p);
    }
}

/* ---- writer -> reader ---- */

static void writer_tests(void)
{
    char path[] = "/tmp/gguf_test.XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "wb");
    gguf_writer *w = gguf_writer_new();
    gguf_w_str(w, "s", "text");
    gguf_w_u32(w, "u", 4000000000u);
    gguf_w_i32(w, "i", -5);
    gguf_w_f32(w, "f", 0.25f);
    gguf_w_bool(w, "b", true);
    const char *strs[] = {"x", "", "zz"};
    gguf_w_arr_str(w, "as", strs, NULL, 3);
    float fl[2] = {1.5f, -2};
    gguf_w_arr_f32(w, "af", fl, 2);
    int32_t il[3] = {1, -2, 3};
    gguf_w_arr_i32(w, "ai", il, 3);
    uint64_t ne1[2] = {64, 3}, ne2[1] = {5}, ne3[2] = {256, 2};
    uint64_t q = gguf_w_tensor(w, "q", GGML_Q8_0, 2, ne1), v = gguf_w_tensor(w, "v", GGML_BF16, 1, ne2),
             k = gguf_w_tensor(w, "k", GGML_Q4_K, 2, ne3);
    ok(q == 2 * 34 * 3 && v == 10 && k == 2 * 144, "tensor sizes: Q8_0 %llu, BF16 %llu, Q4_K %llu",
       (unsigned long long)q, (unsigned long long)v, (unsigned long long)k);
    uint64_t bad[1] = {33};
    ok(gguf_w_tensor(w, "bad", GGML_Q8_0, 1, bad) == 0, "a row that is not whole blocks is refused");
    ok(gguf_w_header(w, f) == 0, "header written");
    uint8_t *data = xcalloc(1, 300);
    for (int i = 0; i < 300; i++) data[i] = (uint8_t)i;
    fwrite(data, 1, q, f);
    gguf_w_pad(w, f);
    fwrite(data, 1, v, f);
    gguf_w_pad(w, f);
    fwrite(data, 1, k, f);
    gguf_w_pad(w, f);
    fclose(f);
    gguf_file g;
    char err[512];
    int rc = gguf_open(path, &g, err, sizeof err);
    ok(rc == 0, "written file reads back (%s)", rc ? err : "ok");
    if (!rc) {
        int64_t iv;
        double d;
        bool bv;
        const char *s;
        size_t sl;
        ok(gguf_get_int(&g, "u", 0, INT64_MAX, &iv, err, sizeof err) == 1 && iv == 4000000000ll, "u32");
        ok(gguf_get_int(&g, "i", -10, 10, &iv, err, sizeof err) == 1 && iv == -5, "i32");
        ok(gguf_get_float(&g, "f", &d, err, sizeof err) == 1 && d == 0.25, "f32");
        ok(gguf_get_bool(&g, "b", &bv, err, sizeof err) == 1 && bv, "bool");
        ok(gguf_get_str(&g, "s", &s, &sl, err, sizeof err) == 1 && sl == 4 && !memcmp(s, "text", 4), "string");
        const gguf_kv *as = gguf_get(&g, "as"), *af = gguf_get(&g, "af"), *ai = gguf_get(&g, "ai");
        gguf_arr_str(as, 2, &s, &sl);
        ok(as->n == 3 && sl == 2 && !memcmp(s, "zz", 2), "string array element");
        ok(gguf_arr_num(af, 1) == -2 && gguf_arr_num(ai, 1) == -2 && gguf_arr_is_int(ai) && !gguf_arr_is_int(af),
           "numeric arrays");
        const gguf_tensor *t = gguf_find(&g, "k");
        ok(t && t->type == GGML_Q4_K && t->nbytes == k && ((const uint8_t *)t->data)[7] == 7 &&
               (uint64_t)((const uint8_t *)t->data - g.map) % 32 == 0,
           "Q4_K tensor bytes in place, 32-aligned");
        ok(gguf_is_path(path), "a file starting with the magic is a GGUF path");
        gguf_close(&g);
    }
    ok(!gguf_is_path("/tmp") && !gguf_is_path("tests/fixtures/tiny-longrope/config.json"),
       "a directory or a JSON file is not");
    free(data);
    gguf_writer_free(w);
    unlink(path);
}

/* ---- merges from scores ---- */

static void merge_tests(void)
{
    /* pieces: a b c ab bc abc; scores put "bc" above "ab"; "abc" splits two ways */
    const char *p[] = {"a", "b", "c", "ab", "bc", "abc", "<s>"};
    size_t len[] = {1, 1, 1, 2, 2, 3, 3};
    float sc[] = {-10, -11, -12, -2, -1, -3, 0};
    int32_t ty[] = {1, 1, 1, 1, 1, 1, 3};
    int32_t(*m)[2];
    char err[256];
    long n = tok_spm_merges(7, p, len, sc, ty, &m, err, sizeof err);
    /* expected: bc (b c), ab (a b), then abc's splits by (left id, right id): a+bc (0,4),
     * ab+c (3,2) */
    ok(n == 4 && m[0][0] == 1 && m[0][1] == 2 && m[1][0] == 0 && m[1][1] == 1 && m[2][0] == 0 && m[2][1] == 4 &&
           m[3][0] == 3 && m[3][1] == 2,
       "merges by score, a piece's splits by ids, control tokens left out");
    free(m);
    const char *d[] = {"a", "a"};
    size_t dl[] = {1, 1};
    float ds[] = {0, 0};
    int32_t dt[] = {1, 1};
    ok(tok_spm_merges(2, d, dl, ds, dt, &m, err, sizeof err) == -1 && strstr(err, "tokens 0 and 1 are the same piece"),
       "a duplicate normal piece is an error");
}

/* ---- conversions ---- */

static void conversion_tests(void)
{
    int exact = 1;
    for (uint32_t h = 0; h < 65536; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;          /* NaN */
        if (quant_f32_to_f16(f16_to_f32((uint16_t)h)) != h) {
            if (exact) printf("#   f16 %04x -> %04x\n", h, quant_f32_to_f16(f16_to_f32((uint16_t)h)));
            exact = 0;
        }
    }
    ok(exact, "every f16 value (normal, subnormal, inf) converts back to itself");
    /* ties between neighbours go to the even one; 65520 and up overflow */
    ok(quant_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00 && quant_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02 &&
           quant_f32_to_f16(65519.0f) == 0x7bff && quant_f32_to_f16(65520.0f) == 0x7c00 &&
           quant_f32_to_f16(0x1p-25f) == 0 && quant_f32_to_f16(0x1.8p-25f) == 1 && quant_f32_to_f16(-0x1p-24f) == 0x8001,
       "f16 rounding: ties to even, overflow, smallest subnormals");
    ok(quant_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80 && quant_f32_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3f82 &&
           quant_f32_to_bf16(bf16_to_f32(0x1234)) == 0x1234,
       "bf16 rounding: ties to even, exact values kept");
}

/* ---- the phi3 config ---- */

static void config_tests(void)
{
    const char *seed = "tests/fuzz/gguf_fuzz.seeds/ok";
    gguf_file g;
    char err[512];
    if (gguf_open(seed, &g, err, sizeof err)) {
        ok(0, "open %s: %s", seed, err);
        return;
    }
    phi3_config c;
    int rc = model_gguf_config(&g, &c, err, sizeof err);
    double af = sqrt(1.0 + log(128.0 / 16) / log(16.0));
    ok(rc == 0 && c.hidden == 8 && c.n_heads == 2 && c.n_kv_heads == 1 && c.head_dim == 4 && c.vocab == 10 &&
           c.max_pos == 128 && c.original_max_pos == 16 && c.sliding_window == 64 && c.rope_longrope &&
           c.short_factor[1] == 1.5f && c.attn_factor == af && !c.tie_embeddings,
       "config from metadata and the LongRoPE factor tensors (%s)", rc ? err : "ok");
    model_config_free(&c);
    tok *t = tok_from_gguf(&g, err, sizeof err);
    ok(t != NULL, "tokenizer from the metadata (%s)", t ? "ok" : err);
    if (t) {
        tok_ids ids = {0};
        tok_encode(t, "ab a<|end|>b", 12, TOK_SPECIAL, NULL, &ids, NULL);
        /* ▁ab (▁a first: score -1, then ▁a+b), ▁a, <|end|>, then "b" is a segment of its
         * own and gets the ▁ prefix too (tokenizer.json's Prepend): "▁b" is no piece */
        ok(ids.n == 5 && ids.v[0] == 8 && ids.v[1] == 6 && ids.v[2] == 9 && ids.v[3] == 3 && ids.v[4] == 5,
           "encode by the score order, control token parsed");
        ok(!tok_add_bos(t) && tok_eos_token(t) && !strcmp(tok_eos_token(t), "</s>"), "add_bos false, eos </s>");
        tok_ids_free(&ids);
        tok_free(t);
    }
    gguf_close(&g);

    /* one defect at a time in a copy of the seed: the config names it */
    size_t len;
    char *orig = read_file(seed, 1 << 20, &len);
    static const struct { const char *from, *to, *want; } defects[] = {
        {"phi3\x0c", "phi2\x0c", "unsupported architecture phi2 (need phi3)"},
        {"phi3.block_count", "phi3.block_cnunt", "metadata phi3.block_count: missing"},
        {"rope_factors_short", "rope_factors_shxrt", "tensor rope_factors_short.weight: missing"},
        {"phi3.rope.dimension_count", "phi3.rope.dimension_cnunt", NULL},   /* optional key */
        {"token_embd.weight", "token_embx.weight", "tensor token_embd.weight: missing"},
    };
    for (size_t i = 0; orig && i < sizeof defects / sizeof *defects; i++) {
        char *b = xmalloc(len);
        memcpy(b, orig, len);
        char *at = memmem(b, len, defects[i].from, strlen(defects[i].from));
        if (at) memcpy(at, defects[i].to, strlen(defects[i].to));
        int prc = gguf_parse((const uint8_t *)b, len, &g, err, sizeof err);
        err[0] = 0;
        int crc = prc ? -2 : model_gguf_config(&g, &c, err, sizeof err);
        if (!prc) {
            model_config_free(&c);
            gguf_close(&g);
        }
        if (defects[i].want)
            ok(at && crc == -1 && strstr(err, defects[i].want), "config: %s (%s)", defects[i].want, err);
        else ok(at && crc == 0, "config: %s is optional", defects[i].from);
        free(b);
    }
    free(orig);
}

/* A minimal phi3 file whose metadata adds one raw pair (key, type, value bytes): the
 * config of it, 0 or -1 with err. */
static int config_with_rope(const char *key, uint32_t type, const void *val, size_t vlen, int longrope,
                            phi3_config *c, char *err, size_t errlen)
{
    char path[] = "/tmp/gguf_test.XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "wb");
    gguf_writer *w = gguf_writer_new();
    gguf_w_str(w, "general.architecture", "phi3");
    gguf_w_u32(w, "phi3.embedding_length", 8);
    gguf_w_u32(w, "phi3.attention.head_count", 2);
    gguf_w_u32(w, "phi3.block_count", 1);
    gguf_w_u32(w, "phi3.feed_forward_length", 8);
    gguf_w_u32(w, "phi3.context_length", 16);
    uint8_t raw[64];
    memcpy(raw, &type, 4);                      /* little-endian host (x86, arm64) */
    memcpy(raw + 4, val, vlen);
    gguf_kv kv = {.key = (char *)key, .raw = raw, .raw_len = 4 + vlen};
    gguf_w_raw(w, &kv);
    uint64_t ne[2] = {8, 4}, half[1] = {2};   /* head size 4: 2 LongRoPE factors */
    uint64_t bytes = gguf_w_tensor(w, "token_embd.weight", GGML_F32, 2, ne);
    if (longrope) {
        gguf_w_tensor(w, "rope_factors_long.weight", GGML_F32, 1, half);
        gguf_w_tensor(w, "rope_factors_short.weight", GGML_F32, 1, half);
    }
    gguf_w_header(w, f);
    float zero[32] = {0}, one[2] = {1, 1};
    fwrite(zero, 1, bytes, f);
    gguf_w_pad(w, f);
    for (int i = 0; i < 2 * longrope; i++) {
        fwrite(one, 1, sizeof one, f);
        gguf_w_pad(w, f);
    }
    fclose(f);
    gguf_writer_free(w);
    gguf_file g;
    int rc = gguf_open(path, &g, err, errlen);
    unlink(path);
    if (rc) return rc;
    rc = model_gguf_config(&g, c, err, errlen);
    model_config_free(c);
    gguf_close(&g);
    return rc;
}

static int config_with(const char *key, uint32_t type, const void *val, size_t vlen, phi3_config *c, char *err,
                       size_t errlen)
{
    return config_with_rope(key, type, val, vlen, 0, c, err, errlen);
}

/* The float metadata the forward pass keeps as float32 must be in the ranges config.json
 * is held to: an F64 eps of 1e-300 was float32 zero (0/0 on a zero row), an attention
 * factor of 1e30 made cos and sin overflow. */
static void config_range_tests(void)
{
    phi3_config c;
    char err[512];
    double tiny = 1e-300, huge = 1e300;
    float big = 1e31f, f2 = 2.0f;
    int rc = config_with("phi3.attention.layer_norm_rms_epsilon", GGUF_F64, &tiny, 8, &c, err, sizeof err);
    ok(rc == -1 && strstr(err, "phi3.attention.layer_norm_rms_epsilon"), "config: F64 eps 1e-300 (0 as float32) refused (%s)",
       rc ? err : "accepted");
    rc = config_with("phi3.attention.layer_norm_rms_epsilon", GGUF_F32, &f2, 4, &c, err, sizeof err);
    ok(rc == -1 && strstr(err, "layer_norm_rms_epsilon"), "config: eps 2 refused, as in config.json (%s)",
       rc ? err : "accepted");
    rc = config_with("phi3.rope.freq_base", GGUF_F64, &huge, 8, &c, err, sizeof err);
    ok(rc == -1 && strstr(err, "phi3.rope.freq_base"), "config: F64 freq_base 1e300 refused (%s)", rc ? err : "accepted");
    rc = config_with("phi3.rope.freq_base", GGUF_F32, &big, 4, &c, err, sizeof err);
    ok(rc == -1 && strstr(err, "phi3.rope.freq_base"), "config: freq_base 1e31 refused, as in config.json (%s)",
       rc ? err : "accepted");
    /* as config.json: an original context longer than the context is refused (context 16) */
    uint32_t orig = 32, orig_ok = 8;
    rc = config_with_rope("phi3.rope.scaling.original_context_length", GGUF_U32, &orig, 4, 1, &c, err, sizeof err);
    ok(rc == -1 && strstr(err, "original_context_length"), "config: original_context_length 32 > context_length 16 refused (%s)",
       rc ? err : "accepted");
    rc = config_with_rope("phi3.rope.scaling.original_context_length", GGUF_U32, &orig_ok, 4, 1, &c, err, sizeof err);
    ok(rc == 0, "config: original_context_length 8 of 16 accepted (%s)", rc ? err : "ok");
    float good = 1e-6f;
    rc = config_with("phi3.attention.layer_norm_rms_epsilon", GGUF_F32, &good, 4, &c, err, sizeof err);
    ok(rc == 0, "config: eps 1e-6 accepted (%s)", rc ? err : "ok");
}

/* A U64 array element past INT64_MAX is that number, not the number with its top bit
 * cleared (a token type 2^63 + 1 read as 1, a normal token). */
static void arr_u64_tests(void)
{
    char path[] = "/tmp/gguf_test.XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "wb");
    gguf_writer *w = gguf_writer_new();
    uint8_t raw[4 + 4 + 8 + 16];
    uint32_t t = GGUF_ARR, at = GGUF_U64;
    uint64_t n = 2, v[2] = {(1ull << 63) + 1, 7};
    memcpy(raw, &t, 4);
    memcpy(raw + 4, &at, 4);
    memcpy(raw + 8, &n, 8);
    memcpy(raw + 16, v, 16);
    gguf_kv kv = {.key = "a", .raw = raw, .raw_len = sizeof raw};
    gguf_w_raw(w, &kv);
    gguf_w_header(w, f);
    fclose(f);
    gguf_writer_free(w);
    gguf_file g;
    char err[512];
    int rc = gguf_open(path, &g, err, sizeof err);
    unlink(path);
    ok(rc == 0, "U64 array file reads (%s)", rc ? err : "ok");
    if (rc) return;
    const gguf_kv *a = gguf_get(&g, "a");
    ok(a && gguf_arr_is_int(a) && gguf_arr_num(a, 0) == 0x1p63 && gguf_arr_num(a, 1) == 7,
       "U64 array elements: 2^63 + 1 reads as ~9.2e18 (got %g), 7 as 7", a ? gguf_arr_num(a, 0) : -1.0);
    gguf_close(&g);
}

int main(void)
{
    phi3_init("gguf_test");
    reader_tests();
    writer_tests();
    merge_tests();
    conversion_tests();
    config_tests();
    config_range_tests();
    arr_u64_tests();
    return tap_done();
}
