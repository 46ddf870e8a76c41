/* tok_gguf.c: a GGUF file's "llama" vocabulary (tokens, scores, token types, special ids)
 * turned into the equivalent tokenizer.json (a BPE with byte fallback whose merges come
 * from the scores, as Hugging Face's SentencePiece converter makes them), then loaded by
 * the one tokenizer (tok_load_parts: the pieces and merges as arrays, the rest as JSON
 * text): a GGUF and a directory tokenize the same way. */
#include "tok/tok_gguf.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/util.h"

#define TOKS_MAX ((1 << 21) - 1)        /* the tokenizer's own id limit */

/* ---- merges from scores ---- */

typedef struct pmap {
    const char *const *piece;
    const size_t *len;
    uint32_t *slot;                     /* index + 1; 0 empty */
    size_t mask;
} pmap;

static uint64_t hash(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    return h;
}

static int32_t pmap_get(const pmap *m, const char *s, size_t n)
{
    for (size_t h = hash(s, n) & m->mask;; h = (h + 1) & m->mask) {
        uint32_t i = m->slot[h];
        if (!i) return -1;
        if (m->len[i - 1] == n && !memcmp(m->piece[i - 1], s, n)) return (int32_t)(i - 1);
    }
}

typedef struct mrec { float score; uint32_t seq; int32_t a, b; } mrec;

static int cmp_mrec(const void *x, const void *y)
{
    const mrec *p = x, *q = y;
    if (p->score != q->score) return p->score > q->score ? -1 : 1;
    return p->seq < q->seq ? -1 : p->seq > q->seq;
}

long tok_spm_merges(size_t n, const char *const *piece, const size_t *len, const float *score,
                    const int32_t *type, int32_t (**out)[2], char *err, size_t errlen)
{
    pmap m = {.piece = piece, .len = len};
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    m.mask = cap - 1;
    m.slot = xcalloc(cap, sizeof *m.slot);
    for (size_t i = 0; i < n; i++) {
        if (type[i] != TOKT_NORMAL) continue;
        size_t h = hash(piece[i], len[i]) & m.mask;
        for (; m.slot[h]; h = (h + 1) & m.mask)
            if (len[m.slot[h] - 1] == len[i] && !memcmp(piece[m.slot[h] - 1], piece[i], len[i])) {
                uint32_t first = m.slot[h] - 1;
                free(m.slot);
                return phi3_fail(err, errlen, "tokens %u and %zu are the same piece", first, i);
            }
        m.slot[h] = (uint32_t)i + 1;
    }
    mrec *r = NULL;
    size_t nr = 0, rcap = 0;
    for (size_t i = 0; i < n; i++) {
        if (type[i] != TOKT_NORMAL || len[i] < 2) continue;
        size_t first = nr;
        for (size_t k = 1; k < len[i]; k++) {
            if (((uint8_t)piece[i][k] & 0xC0) == 0x80) continue;      /* inside a character */
            int32_t a = pmap_get(&m, piece[i], k), b = a < 0 ? -1 : pmap_get(&m, piece[i] + k, len[i] - k);
            if (b < 0) continue;
            if (nr == rcap) r = xrealloc(r, (rcap = rcap ? rcap * 2 : 4096) * sizeof *r);
            r[nr++] = (mrec){score[i], 0, a, b};
        }
        /* the splits of one piece by (left id, right id): a short insertion sort */
        for (size_t x = first + 1; x < nr; x++)
            for (size_t y = x; y > first && (r[y].a < r[y - 1].a || (r[y].a == r[y - 1].a && r[y].b < r[y - 1].b));
                 y--) {
                mrec t = r[y];
                r[y] = r[y - 1];
                r[y - 1] = t;
            }
    }
    for (size_t i = 0; i < nr; i++) r[i].seq = (uint32_t)i;
    if (nr) qsort(r, nr, sizeof *r, cmp_mrec);
    *out = xmalloc((nr ? nr : 1) * sizeof **out);
    for (size_t i = 0; i < nr; i++) {
        (*out)[i][0] = r[i].a;
        (*out)[i][1] = r[i].b;
    }
    free(r);
    free(m.slot);
    return (long)nr;
}

/* ---- the vocabulary ---- */

typedef struct vocab {
    size_t n;
    const char **piece;
    size_t *len;
    float *score;
    int32_t *type;
    int64_t bos, eos, unk;
    bool add_bos, add_space, phi3;
} vocab;

static void vocab_free(vocab *v)
{
    free(v->piece);
    free(v->len);
    free(v->score);
    free(v->type);
}

static bool name_is_phi3(const char *s, size_t n)
{
    char low[256];
    if (n >= sizeof low) n = sizeof low - 1;
    for (size_t i = 0; i < n; i++) low[i] = (char)tolower((unsigned char)s[i]);
    low[n] = 0;
    return strstr(low, "phi-3") || strstr(low, "phi3");
}

static int opt_id(const gguf_file *g, const char *key, size_t n, int64_t *out, char *err, size_t errlen)
{
    *out = -1;
    char why[256];
    int r = gguf_get_int(g, key, 0, (int64_t)n - 1, out, why, sizeof why);
    if (r < 0) return phi3_fail(err, errlen, "%s (%zu tokens)", why, n);
    return 0;
}

static int opt_bool(const gguf_file *g, const char *key, bool def, bool *out, char *err, size_t errlen)
{
    *out = def;
    return gguf_get_bool(g, key, out, err, errlen) < 0 ? -1 : 0;
}

static int read_vocab(const gguf_file *g, vocab *v, char *err, size_t errlen)
{
    memset(v, 0, sizeof *v);
    const char *model;
    size_t mlen;
    int r = gguf_get_str(g, "tokenizer.ggml.model", &model, &mlen, err, errlen);
    if (r < 0) return -1;
    if (r == 0) return phi3_fail(err, errlen, "no tokenizer in the file (tokenizer.ggml.model missing)");
    if (mlen != 5 || memcmp(model, "llama", 5))
        return phi3_fail(err, errlen, "tokenizer.ggml.model %.*s is not supported (llama only)", (int)(mlen < 32 ? mlen : 32),
                    model);
    const gguf_kv *tk = gguf_get(g, "tokenizer.ggml.tokens");
    if (!tk || tk->type != GGUF_ARR || tk->arr_type != GGUF_STR)
        return phi3_fail(err, errlen, "tokenizer.ggml.tokens: missing or not an array of strings");
    if (tk->n == 0 || tk->n > TOKS_MAX)
        return phi3_fail(err, errlen, "tokenizer.ggml.tokens: %llu tokens (1 to %d)", (unsigned long long)tk->n, TOKS_MAX);
    size_t n = v->n = (size_t)tk->n;
    const gguf_kv *sc = gguf_get(g, "tokenizer.ggml.scores"), *ty = gguf_get(g, "tokenizer.ggml.token_type");
    if (sc && (!gguf_arr_is_num(sc) || sc->n != n))
        return phi3_fail(err, errlen, "tokenizer.ggml.scores: not %zu numbers", n);
    if (ty && (!gguf_arr_is_int(ty) || ty->n != n))
        return phi3_fail(err, errlen, "tokenizer.ggml.token_type: not %zu integers", n);
    v->piece = xmalloc(n * sizeof *v->piece);
    v->len = xmalloc(n * sizeof *v->len);
    v->score = xmalloc(n * sizeof *v->score);
    v->type = xmalloc(n * sizeof *v->type);
    for (size_t i = 0; i < n; i++) {
        gguf_arr_str(tk, i, &v->piece[i], &v->len[i]);
        if (v->len[i] == 0 || memchr(v->piece[i], 0, v->len[i]) || tok_utf8_check(v->piece[i], v->len[i]) >= 0)
            return phi3_fail(err, errlen, "tokenizer.ggml.tokens[%zu]: empty, not UTF-8 or holds a NUL byte", i);
        double s = sc ? gguf_arr_num(sc, i) : 0.0;
        if (!isfinite(s)) return phi3_fail(err, errlen, "tokenizer.ggml.scores[%zu]: not a finite number", i);
        v->score[i] = (float)s;
        double t = ty ? gguf_arr_num(ty, i) : TOKT_NORMAL;
        if (!(t >= TOKT_NORMAL && t <= TOKT_BYTE))
            return phi3_fail(err, errlen, "tokenizer.ggml.token_type[%zu]: %g is not a token type (1 to 6)", i, t);
        v->type[i] = (int32_t)t;
    }
    if (opt_id(g, "tokenizer.ggml.bos_token_id", n, &v->bos, err, errlen) ||
        opt_id(g, "tokenizer.ggml.eos_token_id", n, &v->eos, err, errlen) ||
        opt_id(g, "tokenizer.ggml.unknown_token_id", n, &v->unk, err, errlen) ||
        opt_bool(g, "tokenizer.ggml.add_bos_token", true, &v->add_bos, err, errlen) ||
        opt_bool(g, "tokenizer.ggml.add_space_prefix", true, &v->add_space, err, errlen))
        return -1;
    if (v->unk < 0)
        for (size_t i = 0; i < n && v->unk < 0; i++)
            if (v->type[i] == TOKT_UNKNOWN) v->unk = (int64_t)i;
    /* llama.cpp gives Phi-3's special tokens rstrip by the model's name (as tokenizer.json
     * does by flag); every file this project loads is phi3, so the architecture counts. */
    const char *s;
    size_t sl;
    char why[256];
    v->phi3 = (gguf_get_str(g, "general.name", &s, &sl, why, sizeof why) == 1 && name_is_phi3(s, sl)) ||
              (gguf_get_str(g, "general.architecture", &s, &sl, why, sizeof why) == 1 && sl == 4 &&
               !memcmp(s, "phi3", 4));
    return 0;
}

static json_t *jstrn(const char *s, size_t n) { return json_stringn(s, n); }

static bool piece_is(const vocab *v, size_t i, const char *s)
{
    return v->len[i] == strlen(s) && !memcmp(v->piece[i], s, v->len[i]);
}

tok *tok_from_gguf(const gguf_file *g, char *err, size_t errlen)
{
    vocab v;
    if (read_vocab(g, &v, err, errlen)) {
        vocab_free(&v);
        return NULL;
    }
    /* the pieces (not the unused ones) and merges go to the tokenizer as arrays; the JSON
     * text holds the rest */
    json_t *aj = json_array();
    int32_t(*mg)[2] = NULL;
    tok *t = NULL;
    char *text = NULL, *cfg = NULL;
    const char **fp = xmalloc(v.n * sizeof *fp);
    size_t *fl = xmalloc(v.n * sizeof *fl), nf = 0;
    int32_t *fid = xmalloc(v.n * sizeof *fid), *at = xmalloc(v.n * sizeof *at);
    for (size_t i = 0; i < v.n; i++) {
        at[i] = -1;
        if (v.type[i] == TOKT_UNUSED) continue;
        at[i] = (int32_t)nf;
        fp[nf] = v.piece[i], fl[nf] = v.len[i], fid[nf++] = (int32_t)i;
        if (v.type[i] == TOKT_CONTROL || v.type[i] == TOKT_USER || v.type[i] == TOKT_UNKNOWN) {
            bool rstrip = v.phi3 && !piece_is(&v, i, "<unk>") && !piece_is(&v, i, "<s>") &&
                          !piece_is(&v, i, "<|endoftext|>");
            json_array_append_new(aj, json_pack("{s:I, s:o, s:b, s:b, s:b, s:b, s:b}", "id", (json_int_t)i,
                                                "content", jstrn(v.piece[i], v.len[i]), "single_word", 0,
                                                "lstrip", 0, "rstrip", rstrip, "normalized", 0, "special",
                                                v.type[i] != TOKT_USER));
        }
    }
    long nm = tok_spm_merges(v.n, v.piece, v.len, v.score, v.type, &mg, err, errlen);
    if (nm < 0) goto out;
    for (long i = 0; i < nm; i++) mg[i][0] = at[mg[i][0]], mg[i][1] = at[mg[i][1]];   /* normal pieces: kept */
    json_t *model = json_pack("{s:s, s:o, s:b, s:b, s:o, s:o}", "type", "BPE", "unk_token",
                              v.unk >= 0 ? jstrn(v.piece[v.unk], v.len[v.unk]) : json_null(), "fuse_unk", 1,
                              "byte_fallback", 1, "vocab", json_object(), "merges", json_array());
    json_t *norm = json_pack("{s:s, s:[{s:s, s:{s:s}, s:s}]}", "type", "Sequence", "normalizers", "type", "Replace",
                             "pattern", "String", " ", "content", "\xe2\x96\x81");
    json_t *dec = json_pack("{s:s, s:[{s:s, s:{s:s}, s:s}, {s:s}, {s:s}]}", "type", "Sequence", "decoders", "type",
                            "Replace", "pattern", "String", "\xe2\x96\x81", "content", " ", "type", "ByteFallback",
                            "type", "Fuse");
    if (v.add_space) {
        json_array_insert_new(json_object_get(norm, "normalizers"), 0,
                              json_pack("{s:s, s:s}", "type", "Prepend", "prepend", "\xe2\x96\x81"));
        json_array_append_new(json_object_get(dec, "decoders"),
                              json_pack("{s:s, s:s, s:i, s:i}", "type", "Strip", "content", " ", "start", 1, "stop", 0));
    }
    json_t *root = json_pack("{s:o, s:O, s:o, s:o}", "model", model, "added_tokens", aj, "normalizer", norm,
                             "decoder", dec);
    json_t *conf = json_pack("{s:b}", "add_bos_token", v.add_bos);
    if (v.eos >= 0) json_object_set_new(conf, "eos_token", jstrn(v.piece[v.eos], v.len[v.eos]));
    if (v.bos >= 0) json_object_set_new(conf, "bos_token", jstrn(v.piece[v.bos], v.len[v.bos]));
    text = root ? json_dumps(root, JSON_COMPACT) : NULL;
    cfg = conf ? json_dumps(conf, JSON_COMPACT) : NULL;
    json_decref(root);
    json_decref(conf);
    if (!text || !cfg) {
        phi3_fail(err, errlen, "cannot build the tokenizer (out of memory)");
        goto out;
    }
    char why[512];
    tok_parts parts = {.n_pieces = nf, .n_merges = (size_t)nm, .piece = fp, .len = fl, .id = fid,
                       .merge = (const int32_t(*)[2])mg, .what = "tokenizer.ggml.tokens"};
    t = tok_load_parts(text, strlen(text), cfg, strlen(cfg), &parts, why, sizeof why);
    if (!t) phi3_fail(err, errlen, "tokenizer: %s", why);
out:
    json_decref(aj);
    free(mg);
    free(fp);
    free(fl);
    free(fid);
    free(at);
    free(text);
    free(cfg);
    vocab_free(&v);
    return t;
}

tok *tok_load_gguf(const char *path, char *err, size_t errlen)
{
    gguf_file g;
    if (gguf_open(path, &g, err, errlen)) return NULL;
    char why[512];
    tok *t = tok_from_gguf(&g, why, sizeof why);
    if (!t) phi3_fail(err, errlen, "%s: %s", path, why);
    gguf_close(&g);
    return t;
}

/* ---- for phi3-sample ---- */

static void push(int32_t **ids, size_t *n, int32_t v)
{
    for (size_t i = 0; i < *n; i++)
        if ((*ids)[i] == v) return;
    *ids = xrealloc(*ids, (*n + 1) * sizeof **ids);
    (*ids)[(*n)++] = v;
}

int tok_gguf_stop_ids(const char *path, int32_t **ids, size_t *n, char *err, size_t errlen)
{
    gguf_file g;
    vocab v;
    if (gguf_open(path, &g, err, errlen)) return -1;
    char why[512];
    int rc = read_vocab(&g, &v, why, sizeof why);
    static const char *eog[] = {"<|endoftext|>", "<|end|>", "<|eot_id|>", "<|eom_id|>", "<|im_end|>",
                                "<end_of_turn>", "<EOT>", "_<EOT>"};
    static const char *keys[] = {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"};
    if (!rc) {
        if (v.eos >= 0) push(ids, n, (int32_t)v.eos);
        for (size_t k = 0; k < sizeof keys / sizeof *keys && !rc; k++) {
            int64_t id;
            rc = opt_id(&g, keys[k], v.n, &id, why, sizeof why);
            if (!rc && id >= 0) push(ids, n, (int32_t)id);
        }
        for (size_t i = 0; i < v.n && !rc; i++)
            if (v.type[i] == TOKT_CONTROL || v.type[i] == TOKT_USER)
                for (size_t k = 0; k < sizeof eog / sizeof *eog; k++)
                    if (piece_is(&v, i, eog[k])) push(ids, n, (int32_t)i);
    }
    if (rc) phi3_fail(err, errlen, "%s: %s", path, why);
    vocab_free(&v);
    gguf_close(&g);
    return rc;
}

int tok_gguf_n_ids(const char *path, int32_t *n, char *err, size_t errlen)
{
    gguf_file g;
    vocab v;
    if (gguf_open(path, &g, err, errlen)) return -1;
    char why[512];
    int rc = read_vocab(&g, &v, why, sizeof why);
    if (rc) phi3_fail(err, errlen, "%s: %s", path, why);
    else {
        *n = 0;
        for (size_t i = 0; i < v.n; i++)
            if (v.type[i] != TOKT_UNUSED) *n = (int32_t)i + 1;
    }
    vocab_free(&v);
    gguf_close(&g);
    return rc;
}

int tok_gguf_model_vocab(const char *path, int *n, char *err, size_t errlen)
{
    gguf_file g;
    if (gguf_open(path, &g, err, errlen)) return -1;
    const gguf_tensor *t = gguf_find(&g, "token_embd.weight");
    const gguf_kv *tk = gguf_get(&g, "tokenizer.ggml.tokens");
    uint64_t v = t && t->ndim == 2 ? t->ne[1] : tk && tk->type == GGUF_ARR ? tk->n : 0;
    gguf_close(&g);
    if (v == 0 || v > TOKS_MAX) return phi3_fail(err, errlen, "%s: no token_embd.weight rows or tokens to size the vocabulary", path);
    *n = (int)v;
    return 0;
}
