/* tokenizer.c: a tokenizer.json BPE tokenizer: loading (vocab, merges, added tokens,
 * normalizer, decoder), encoding with a priority-queue merge, and streaming decode. */
#include "tok/tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/util.h"
#include "tok/tok_gguf.h"

/* ------------------------------------------------------------------ data structures */

#define TOK_MAX_ID ((1 << 21) - 1)     /* ids from this on are refused: a pair fits 42 bits */
#define TOK_MAX_MERGES (1 << 22)       /* ranks fit the other 22 bits of a merge slot */
#define SLOT_EMPTY UINT64_MAX
#define TOK_MAX_JSON ((size_t)256 << 20)
#define NONE UINT32_MAX

enum { F_PRESENT = 1, F_SPECIAL = 2, F_ADDED = 4 };

typedef struct added {
    uint32_t off, len;                 /* content in the pool */
    int32_t id;
    bool special, lstrip, rstrip, single_word;
} added;

typedef struct norm_op {               /* one normalizer step, applied in file order */
    enum { N_PREPEND, N_REPLACE } kind;
    uint32_t a_off, a_len, b_off, b_len;   /* prepend: a; replace: a -> b */
} norm_op;

typedef struct dec_rep { uint32_t a_off, a_len, b_off, b_len; } dec_rep;

struct tok {
    char *pool; size_t pool_n, pool_cap;     /* every string, addressed by offset */
    int n_vocab;
    uint32_t *piece_off, *piece_len;         /* [n_vocab]; NONE if the id is unused */
    uint8_t *flags;                          /* [n_vocab] F_* */
    uint32_t *dec_off, *dec_len;             /* [n_vocab] text after the decoder's Replace */
    int16_t *dec_byte;                       /* [n_vocab] byte of a <0xNN> token, else -1 */

    /* model vocab (what BPE sees): strings -> ids, open addressing, slot = index + 1 */
    uint32_t *mv_off, *mv_len; int32_t *mv_id; size_t n_mv;
    uint32_t *vh; uint32_t vh_mask;
    int32_t ascii_id[128];                   /* single-byte chars, the hot path */
    int32_t byte_id[256];                    /* <0xNN> tokens for byte fallback */

    /* merges: open addressing, slot = (left id << 21 | right id) << 22 | rank (one
     * cache line per probe); merge_new[rank] is the merged id */
    uint64_t *mslot; uint32_t m_mask;
    int32_t *merge_new; size_t n_merges;

    added *added; int n_added;
    uint8_t added_first[256];                /* first bytes of added-token contents */

    norm_op *norm; int n_norm;

    int32_t unk_id;
    bool fuse_unk, byte_fallback, ignore_merges;
    /* chunk marker: the whole prompt is one BPE word, but when no vocab piece contains
     * this char after a different char, a merge can never cross "x|marker", so the word
     * is merged chunk by chunk with the same result (see tok_load_mem). */
    char mark[4]; int mark_len;

    dec_rep *drep; int n_drep;
    bool dec_bytes;                          /* ByteFallback decoder present */
    int strip_start; char strip_ch[4]; int strip_len;

    char *eos, *bos; bool add_bos;
};

/* ------------------------------------------------------------------ small helpers */

void tok_ids_free(tok_ids *a) { free(a->v); a->v = NULL; a->n = a->cap = 0; }
void tok_buf_free(tok_buf *b) { free(b->p); b->p = NULL; b->n = b->cap = 0; }

static void ids_push(tok_ids *a, int32_t id)
{
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap + a->cap / 2 : 64;
        a->v = xrealloc(a->v, a->cap * sizeof *a->v);
    }
    a->v[a->n++] = id;
}

/* Between chunks: hand a long output to its flush callback (tokenizer.h). */
static void maybe_flush(tok_ids *a)
{
    if (a->flush && a->n >= TOK_FLUSH_IDS) {
        a->flush(a, a->ctx);
        a->n = 0;
    }
}

static void buf_add(tok_buf *b, const void *p, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->n + n + 1) c *= 2;
        b->p = xrealloc(b->p, c);
        b->cap = c;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = 0;                          /* always NUL-terminated for callers */
}

static uint32_t pool_add(tok *t, const char *s, size_t n)
{
    if (t->pool_n + n + 1 > t->pool_cap) {
        size_t c = t->pool_cap ? t->pool_cap : 1 << 16;
        while (c < t->pool_n + n + 1) c *= 2;
        t->pool = xrealloc(t->pool, c);
        t->pool_cap = c;
    }
    uint32_t off = (uint32_t)t->pool_n;
    memcpy(t->pool + off, s, n);
    t->pool[off + n] = 0;
    t->pool_n += n + 1;
    return off;
}

static inline const char *P(const tok *t, uint32_t off) { return t->pool + off; }

static uint32_t hash_bytes(const char *s, size_t n)
{
    uint32_t h = 2166136261u;                /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

static inline uint32_t hash_pair(uint64_t k)
{
    k ^= k >> 33; k *= 0xff51afd7ed558ccdull; k ^= k >> 33;
    return (uint32_t)k;
}

static uint32_t pow2_at_least(size_t n)
{
    uint32_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

/* Length of the UTF-8 sequence starting with lead byte c (input already validated). */
static inline int u8len(uint8_t c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

long tok_utf8_check(const char *str, size_t n)
{
    const uint8_t *s = (const uint8_t *)str;
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) { i++; continue; }
        int need; uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;        /* overlong */
            if (c == 0xED) hi = 0x9F;        /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;        /* > U+10FFFF */
        } else return (long)i;
        if (i + need >= n) return (long)i;   /* truncated */
        if (s[i + 1] < lo || s[i + 1] > hi) return (long)i;
        for (int k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80) return (long)i;
        i += need + 1;
    }
    return -1;
}

/* Code point at s (valid UTF-8, at least one char). */
static uint32_t u8dec(const uint8_t *s, int *len)
{
    int l = u8len(s[0]);
    *len = l;
    if (l == 1) return s[0];
    uint32_t c = s[0] & (0x7F >> l);
    for (int k = 1; k < l; k++) c = (c << 6) | (s[k] & 0x3F);
    return c;
}

/* Rust's char::is_whitespace (Unicode White_Space), which the added-token strips use. */
static bool is_ws(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* Word characters for single_word added tokens: ASCII alphanumerics and '_', and (an
 * approximation of Unicode alphanumerics) any non-ASCII char that is not whitespace. */
static bool is_word(uint32_t c)
{
    if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
                         (c >= 'A' && c <= 'Z') || c == '_';
    return !is_ws(c);
}

/* ------------------------------------------------------------------ lookups */

static int32_t vocab_get(const tok *t, const char *s, size_t n)
{
    uint32_t h = hash_bytes(s, n) & t->vh_mask;
    for (;;) {
        uint32_t slot = t->vh[h];
        if (!slot) return -1;
        size_t i = slot - 1;
        if (t->mv_len[i] == n && memcmp(P(t, t->mv_off[i]), s, n) == 0) return t->mv_id[i];
        h = (h + 1) & t->vh_mask;
    }
}

static inline int32_t merge_rank(const tok *t, int32_t a, int32_t b)
{
    uint64_t k = ((uint64_t)(uint32_t)a << 21) | (uint32_t)b;
    uint32_t h = hash_pair(k) & t->m_mask;
    for (;;) {
        uint64_t s = t->mslot[h];
        if (s == SLOT_EMPTY) return -1;
        if (s >> 22 == k) return (int32_t)(s & (TOK_MAX_MERGES - 1));
        h = (h + 1) & t->m_mask;
    }
}

int tok_n_vocab(const tok *t) { return t->n_vocab; }

const char *tok_piece(const tok *t, int32_t id, size_t *len)
{
    if (id < 0 || id >= t->n_vocab || !(t->flags[id] & F_PRESENT)) return NULL;
    if (len) *len = t->piece_len[id];
    return P(t, t->piece_off[id]);
}

bool tok_is_special(const tok *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && (t->flags[id] & F_SPECIAL);
}

bool tok_is_added(const tok *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && (t->flags[id] & F_ADDED);
}

int32_t tok_find(const tok *t, const char *s, size_t len)
{
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].len == len && memcmp(P(t, t->added[i].off), s, len) == 0)
            return t->added[i].id;
    return vocab_get(t, s, len);
}

const char *tok_eos_token(const tok *t) { return t->eos; }
const char *tok_bos_token(const tok *t) { return t->bos; }
bool tok_add_bos(const tok *t) { return t->add_bos; }

/* ------------------------------------------------------------------ loading */

typedef struct lerr { char *buf; size_t len; } lerr;

static int fail(lerr *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(lerr *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (e->buf && e->len) vsnprintf(e->buf, e->len, fmt, ap);
    va_end(ap);
    return -1;
}

/* A JSON string value (may hold NULs only if jansson allowed them; it does not here). */
static bool jstr(json_t *j, const char **s, size_t *n)
{
    if (!json_is_string(j)) return false;
    *s = json_string_value(j);
    *n = json_string_length(j);
    return true;
}

static bool jflag(json_t *o, const char *key)
{
    return json_is_true(json_object_get(o, key));
}

/* Strings of a {"String": "x"} pattern; regex patterns are not supported. */
static int pattern_str(json_t *pat, const char **s, size_t *n, lerr *e, const char *what)
{
    if (!json_is_object(pat) || !jstr(json_object_get(pat, "String"), s, n))
        return fail(e, "%s: only String patterns are supported", what);
    if (*n == 0) return fail(e, "%s: empty pattern", what);
    return 0;
}

static void vocab_alloc(tok *t, size_t n)
{
    t->n_mv = n;
    t->mv_off = xmalloc(n * sizeof *t->mv_off);
    t->mv_len = xmalloc(n * sizeof *t->mv_len);
    t->mv_id = xmalloc(n * sizeof *t->mv_id);
    t->vh_mask = pow2_at_least(n * 2) - 1;
    t->vh = xcalloc((size_t)t->vh_mask + 1, sizeof *t->vh);
}

/* entry i of the model vocab (vocab_alloc'ed): key (NUL-free) is id; the caller has
 * checked that key is not there yet and id is in range */
static void vocab_put(tok *t, size_t i, const char *key, size_t len, int32_t id)
{
    t->mv_off[i] = pool_add(t, key, len);
    t->mv_len[i] = (uint32_t)len;
    t->mv_id[i] = id;
    uint32_t h = hash_bytes(key, len) & t->vh_mask;
    while (t->vh[h]) h = (h + 1) & t->vh_mask;
    t->vh[h] = (uint32_t)i + 1;
    if (id >= t->n_vocab) t->n_vocab = id + 1;
}

static int load_vocab(tok *t, json_t *model, lerr *e)
{
    json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_object(vocab)) return fail(e, "model.vocab: missing or not an object");
    size_t n = json_object_size(vocab);
    if (n == 0) return fail(e, "model.vocab: empty");
    vocab_alloc(t, n);
    const char *key; json_t *val; size_t i = 0;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 ||
            json_integer_value(val) >= TOK_MAX_ID)
            return fail(e, "model.vocab: bad id for piece \"%.40s\"", key);
        size_t len = strlen(key);         /* jansson object keys are NUL-free */
        if (vocab_get(t, key, len) >= 0) return fail(e, "model.vocab: duplicate piece");
        vocab_put(t, i++, key, len, (int32_t)json_integer_value(val));
    }
    return 0;
}

static int merges_alloc(tok *t, size_t n, lerr *e)
{
    if (n >= TOK_MAX_MERGES) return fail(e, "model.merges: more than %d merges", TOK_MAX_MERGES - 1);
    t->n_merges = n;
    t->merge_new = xmalloc((n ? n : 1) * sizeof *t->merge_new);
    t->m_mask = pow2_at_least(n * 2 + 1) - 1;
    t->mslot = xmalloc(((size_t)t->m_mask + 1) * sizeof *t->mslot);
    memset(t->mslot, 0xff, ((size_t)t->m_mask + 1) * sizeof *t->mslot);
    return 0;
}

/* merge r (merges_alloc'ed): pieces a and b, whose concatenation (built in *cat) must be
 * a piece too */
static int merge_put(tok *t, size_t r, const char *a, size_t an, const char *b, size_t bn, char **cat,
                     size_t *cat_cap, lerr *e)
{
    int32_t ia = vocab_get(t, a, an), ib = vocab_get(t, b, bn);
    if (ia < 0 || ib < 0) return fail(e, "model.merges[%zu]: piece not in the vocab", r);
    if (an + bn > *cat_cap) { *cat_cap = (an + bn) * 2; *cat = xrealloc(*cat, *cat_cap); }
    memcpy(*cat, a, an); memcpy(*cat + an, b, bn);
    int32_t in = vocab_get(t, *cat, an + bn);
    if (in < 0) return fail(e, "model.merges[%zu]: merged piece not in the vocab", r);
    t->merge_new[r] = in;
    uint64_t k = ((uint64_t)(uint32_t)ia << 21) | (uint32_t)ib;
    uint32_t h = hash_pair(k) & t->m_mask;
    while (t->mslot[h] != SLOT_EMPTY && t->mslot[h] >> 22 != k) h = (h + 1) & t->m_mask;
    t->mslot[h] = k << 22 | r;        /* a repeated pair: the last one wins, as in HF */
    return 0;
}

static int load_merges(tok *t, json_t *model, lerr *e)
{
    json_t *merges = json_object_get(model, "merges");
    if (!json_is_array(merges)) return fail(e, "model.merges: missing or not an array");
    size_t n = json_array_size(merges);
    if (merges_alloc(t, n, e)) return -1;
    char *cat = NULL; size_t cat_cap = 0;
    int rc = 0;
    for (size_t r = 0; r < n && rc == 0; r++) {
        json_t *m = json_array_get(merges, r);
        const char *a, *b; size_t an, bn;
        if (json_is_string(m)) {          /* "a b" (tokenizers < 0.20) */
            const char *s = json_string_value(m);
            size_t sn = json_string_length(m);
            const char *sp = memchr(s, ' ', sn);
            if (!sp || memchr(sp + 1, ' ', sn - (size_t)(sp + 1 - s)))
                { rc = fail(e, "model.merges[%zu]: not two pieces", r); break; }
            a = s; an = (size_t)(sp - s); b = sp + 1; bn = sn - an - 1;
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   jstr(json_array_get(m, 0), &a, &an) && jstr(json_array_get(m, 1), &b, &bn)) {
            /* ["a", "b"] (tokenizers >= 0.20) */
        } else { rc = fail(e, "model.merges[%zu]: not a merge", r); break; }
        rc = merge_put(t, r, a, an, b, bn, &cat, &cat_cap, e);
    }
    free(cat);
    return rc;
}

/* tok_parts' pieces and merges in place of model.vocab and model.merges */
static int load_parts(tok *t, const tok_parts *p, lerr *e)
{
    if (p->n_pieces == 0) return fail(e, "%s: empty", p->what);
    vocab_alloc(t, p->n_pieces);
    for (size_t i = 0; i < p->n_pieces; i++) {
        if (p->id[i] < 0 || p->id[i] >= TOK_MAX_ID) return fail(e, "%s: bad id %d", p->what, (int)p->id[i]);
        if (vocab_get(t, p->piece[i], p->len[i]) >= 0)
            return fail(e, "%s[%d]: the same piece as an earlier token", p->what, (int)p->id[i]);
        vocab_put(t, i, p->piece[i], p->len[i], p->id[i]);
    }
    if (merges_alloc(t, p->n_merges, e)) return -1;
    char *cat = NULL; size_t cat_cap = 0;
    int rc = 0;
    for (size_t r = 0; r < p->n_merges && rc == 0; r++) {
        int32_t a = p->merge[r][0], b = p->merge[r][1];
        if (a < 0 || b < 0 || (size_t)a >= p->n_pieces || (size_t)b >= p->n_pieces)
            rc = fail(e, "model.merges[%zu]: piece not in the vocab", r);
        else
            rc = merge_put(t, r, p->piece[a], p->len[a], p->piece[b], p->len[b], &cat, &cat_cap, e);
    }
    free(cat);
    return rc;
}

static int load_added(tok *t, json_t *root, lerr *e)
{
    json_t *arr = json_object_get(root, "added_tokens");
    if (!arr || json_is_null(arr)) return 0;
    if (!json_is_array(arr)) return fail(e, "added_tokens: not an array");
    size_t n = json_array_size(arr);
    t->added = xcalloc(n ? n : 1, sizeof *t->added);
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(arr, i);
        json_t *jid = json_object_get(o, "id");
        const char *s; size_t len;
        if (!json_is_object(o) || !json_is_integer(jid) || json_integer_value(jid) < 0 ||
            json_integer_value(jid) >= TOK_MAX_ID || !jstr(json_object_get(o, "content"), &s, &len))
            return fail(e, "added_tokens[%zu]: needs an id and a content", i);
        if (len == 0) return fail(e, "added_tokens[%zu]: empty content", i);
        if (jflag(o, "normalized"))       /* would need matching on normalized text */
            return fail(e, "added_tokens[%zu]: normalized added tokens are not supported", i);
        added *a = &t->added[t->n_added++];
        a->off = pool_add(t, s, len);
        a->len = (uint32_t)len;
        a->id = (int32_t)json_integer_value(jid);
        a->special = jflag(o, "special");
        a->lstrip = jflag(o, "lstrip");
        a->rstrip = jflag(o, "rstrip");
        a->single_word = jflag(o, "single_word");
        t->added_first[(uint8_t)s[0]] = 1;
        if (a->id >= t->n_vocab) t->n_vocab = a->id + 1;
    }
    return 0;
}

static int load_normalizer(tok *t, json_t *root, lerr *e)
{
    json_t *nz = json_object_get(root, "normalizer");
    if (!nz || json_is_null(nz)) return 0;
    json_t *list = nz;
    size_t n = 1;
    if (json_is_object(nz) && json_is_string(json_object_get(nz, "type")) &&
        strcmp(json_string_value(json_object_get(nz, "type")), "Sequence") == 0) {
        list = json_object_get(nz, "normalizers");
        if (!json_is_array(list)) return fail(e, "normalizer: Sequence without normalizers");
        n = json_array_size(list);
    }
    t->norm = xcalloc(n ? n : 1, sizeof *t->norm);
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_is_array(list) ? json_array_get(list, i) : list;
        const char *type = json_string_value(json_object_get(o, "type"));
        if (!type) return fail(e, "normalizer: missing type");
        norm_op *op = &t->norm[t->n_norm];
        const char *a, *b; size_t an, bn;
        if (strcmp(type, "Prepend") == 0) {
            if (!jstr(json_object_get(o, "prepend"), &a, &an))
                return fail(e, "normalizer Prepend: no prepend string");
            op->kind = N_PREPEND;
            op->a_off = pool_add(t, a, an); op->a_len = (uint32_t)an;
        } else if (strcmp(type, "Replace") == 0) {
            if (pattern_str(json_object_get(o, "pattern"), &a, &an, e, "normalizer Replace") < 0)
                return -1;
            if (!jstr(json_object_get(o, "content"), &b, &bn))
                return fail(e, "normalizer Replace: no content");
            op->kind = N_REPLACE;
            op->a_off = pool_add(t, a, an); op->a_len = (uint32_t)an;
            op->b_off = pool_add(t, b, bn); op->b_len = (uint32_t)bn;
        } else return fail(e, "normalizer type %.40s is not supported", type);
        t->n_norm++;
    }
    return 0;
}

static int load_decoder(tok *t, json_t *root, lerr *e)
{
    json_t *dz = json_object_get(root, "decoder");
    if (!dz || json_is_null(dz)) return 0;
    json_t *list = dz;
    size_t n = 1;
    if (json_is_object(dz) && json_is_string(json_object_get(dz, "type")) &&
        strcmp(json_string_value(json_object_get(dz, "type")), "Sequence") == 0) {
        list = json_object_get(dz, "decoders");
        if (!json_is_array(list)) return fail(e, "decoder: Sequence without decoders");
        n = json_array_size(list);
    }
    t->drep = xcalloc(n ? n : 1, sizeof *t->drep);
    bool fused = false;
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_is_array(list) ? json_array_get(list, i) : list;
        const char *type = json_string_value(json_object_get(o, "type"));
        if (!type) return fail(e, "decoder: missing type");
        /* Per-token steps must come before Fuse, the strip after it: that is the shape
         * whose output can be streamed token by token. */
        if (strcmp(type, "Replace") == 0) {
            const char *a, *b; size_t an, bn;
            if (fused || t->dec_bytes) return fail(e, "decoder: Replace after Fuse/ByteFallback is not supported");
            if (pattern_str(json_object_get(o, "pattern"), &a, &an, e, "decoder Replace") < 0) return -1;
            if (!jstr(json_object_get(o, "content"), &b, &bn)) return fail(e, "decoder Replace: no content");
            dec_rep *d = &t->drep[t->n_drep++];
            d->a_off = pool_add(t, a, an); d->a_len = (uint32_t)an;
            d->b_off = pool_add(t, b, bn); d->b_len = (uint32_t)bn;
        } else if (strcmp(type, "ByteFallback") == 0) {
            if (fused) return fail(e, "decoder: ByteFallback after Fuse is not supported");
            t->dec_bytes = true;
        } else if (strcmp(type, "Fuse") == 0) {
            fused = true;
        } else if (strcmp(type, "Strip") == 0) {
            const char *c; size_t cn;
            json_t *js = json_object_get(o, "start"), *jp = json_object_get(o, "stop");
            if (!jstr(json_object_get(o, "content"), &c, &cn) || cn == 0 || cn > 4 ||
                (size_t)u8len((uint8_t)c[0]) != cn || !json_is_integer(js) || !json_is_integer(jp))
                return fail(e, "decoder Strip: needs one content char, start and stop");
            if (json_integer_value(jp) != 0) return fail(e, "decoder Strip: stop > 0 is not supported");
            if (!fused && i + 1 < n) return fail(e, "decoder: Strip before Fuse is not supported");
            if (json_integer_value(js) < 0 || json_integer_value(js) > 64)
                return fail(e, "decoder Strip: bad start");
            t->strip_start = (int)json_integer_value(js);
            memcpy(t->strip_ch, c, cn); t->strip_len = (int)cn;
        } else return fail(e, "decoder type %.40s is not supported", type);
    }
    return 0;
}

static int load_config(tok *t, const char *cfg, size_t len, lerr *e)
{
    json_error_t je;
    json_t *root = json_loadb(cfg, len, 0, &je);
    if (!root) return fail(e, "tokenizer_config.json: line %d: %s", je.line, je.text);
    int rc = 0;
    if (!json_is_object(root)) { rc = fail(e, "tokenizer_config.json: not an object"); goto out; }
    const char *keys[2] = {"eos_token", "bos_token"};
    char **dst[2] = {&t->eos, &t->bos};
    for (int k = 0; k < 2; k++) {
        json_t *v = json_object_get(root, keys[k]);
        if (json_is_object(v)) v = json_object_get(v, "content");   /* AddedToken form */
        const char *s; size_t n;
        if (jstr(v, &s, &n)) { *dst[k] = xmalloc(n + 1); memcpy(*dst[k], s, n + 1); }
    }
    t->add_bos = jflag(root, "add_bos_token");
out:
    json_decref(root);
    return rc;
}

/* After loading: per-id tables, byte fallback, the chunk marker. */
static int finish(tok *t, lerr *e)
{
    int nv = t->n_vocab;
    t->piece_off = xmalloc((size_t)nv * sizeof *t->piece_off);
    t->piece_len = xcalloc((size_t)nv, sizeof *t->piece_len);
    t->flags = xcalloc((size_t)nv, 1);
    for (int i = 0; i < nv; i++) t->piece_off[i] = NONE;
    for (size_t i = 0; i < t->n_mv; i++) {
        int32_t id = t->mv_id[i];
        if (t->piece_off[id] != NONE) return fail(e, "model.vocab: id %d used twice", id);
        t->piece_off[id] = t->mv_off[i]; t->piece_len[id] = t->mv_len[i];
        t->flags[id] = F_PRESENT;
    }
    for (int i = 0; i < t->n_added; i++) {      /* added content wins, as in HF */
        added *a = &t->added[i];
        t->piece_off[a->id] = a->off; t->piece_len[a->id] = a->len;
        t->flags[a->id] = F_PRESENT | F_ADDED | (a->special ? F_SPECIAL : 0);
    }

    for (int c = 0; c < 128; c++) { char s = (char)c; t->ascii_id[c] = vocab_get(t, &s, 1); }
    bool all_bytes = true;
    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", b);
        t->byte_id[b] = vocab_get(t, s, 6);
        if (t->byte_id[b] < 0) all_bytes = false;
    }
    if (!(t->byte_fallback && all_bytes) && t->unk_id < 0)
        return fail(e, "model: neither complete byte fallback nor an unk_token");

    /* Decoded text of every id: the piece with the decoder's Replace steps applied;
     * <0xNN> pieces become bytes when the decoder has ByteFallback. */
    t->dec_off = xmalloc((size_t)nv * sizeof *t->dec_off);
    t->dec_len = xcalloc((size_t)nv, sizeof *t->dec_len);
    t->dec_byte = xmalloc((size_t)nv * sizeof *t->dec_byte);
    tok_buf cur = {0}, nxt = {0};
    for (int id = 0; id < nv; id++) {
        t->dec_byte[id] = -1;
        t->dec_off[id] = 0;
        if (!(t->flags[id] & F_PRESENT)) continue;
        cur.n = 0;
        buf_add(&cur, P(t, t->piece_off[id]), t->piece_len[id]);
        for (int r = 0; r < t->n_drep; r++) {
            const char *a = P(t, t->drep[r].a_off), *b = P(t, t->drep[r].b_off);
            size_t an = t->drep[r].a_len;
            nxt.n = 0;
            for (size_t i = 0; i < cur.n;) {
                if (i + an <= cur.n && memcmp(cur.p + i, a, an) == 0) {
                    buf_add(&nxt, b, t->drep[r].b_len); i += an;
                } else buf_add(&nxt, cur.p + i++, 1);
            }
            tok_buf sw = cur; cur = nxt; nxt = sw;
        }
        unsigned hv;
        if (t->dec_bytes && cur.n == 6 && memcmp(cur.p, "<0x", 3) == 0 && cur.p[5] == '>' &&
            strchr("0123456789abcdefABCDEF", cur.p[3]) && strchr("0123456789abcdefABCDEF", cur.p[4]) &&
            sscanf(cur.p + 3, "%2x", &hv) == 1)
            t->dec_byte[id] = (int16_t)hv;
        t->dec_off[id] = pool_add(t, cur.p ? cur.p : "", cur.n);
        t->dec_len[id] = (uint32_t)cur.n;
    }
    tok_buf_free(&cur); tok_buf_free(&nxt);

    /* Chunk marker: the content of the normalizer's last one-char Replace (▁). Valid
     * only if the marker is itself a piece and no piece has it after another char. */
    for (int i = t->n_norm - 1; i >= 0; i--) {
        norm_op *op = &t->norm[i];
        if (op->kind == N_REPLACE && op->b_len > 0 && op->b_len <= 4 &&
            u8len((uint8_t)P(t, op->b_off)[0]) == (int)op->b_len) {
            memcpy(t->mark, P(t, op->b_off), op->b_len);
            t->mark_len = (int)op->b_len;
            break;
        }
    }
    if (t->mark_len && vocab_get(t, t->mark, (size_t)t->mark_len) < 0) t->mark_len = 0;
    for (size_t i = 0; i < t->n_mv && t->mark_len; i++) {
        const char *s = P(t, t->mv_off[i]);
        size_t n = t->mv_len[i], ml = (size_t)t->mark_len;
        bool prev_mark = true;            /* a leading marker run is fine */
        for (size_t j = 0; j < n;) {
            bool m = j + ml <= n && memcmp(s + j, t->mark, ml) == 0;
            if (m && !prev_mark) { t->mark_len = 0; break; }
            prev_mark = m;
            j += m ? ml : 1;
        }
    }
    return 0;
}

tok *tok_load_mem(const char *json, size_t len, const char *config, size_t config_len,
                  char *err, size_t errlen)
{
    return tok_load_parts(json, len, config, config_len, NULL, err, errlen);
}

tok *tok_load_parts(const char *json, size_t len, const char *config, size_t config_len, const tok_parts *parts,
                    char *err, size_t errlen)
{
    lerr e = {err, errlen};
    if (err && errlen) err[0] = 0;
    json_error_t je;
    json_t *root = json_loadb(json, len, 0, &je);
    if (!root) { fail(&e, "tokenizer.json: line %d: %s", je.line, je.text); return NULL; }
    tok *t = xcalloc(1, sizeof *t);
    t->unk_id = -1;
    int rc = -1;
    json_t *model = json_object_get(root, "model");
    const char *type = json_string_value(json_object_get(model, "type"));
    json_t *pre = json_object_get(root, "pre_tokenizer");
    json_t *drop = json_object_get(model, "dropout");
    const char *cs = json_string_value(json_object_get(model, "continuing_subword_prefix"));
    const char *ew = json_string_value(json_object_get(model, "end_of_word_suffix"));
    if (!json_is_object(root) || !json_is_object(model)) { fail(&e, "tokenizer.json: no model"); goto out; }
    if (!type || strcmp(type, "BPE") != 0) { fail(&e, "model type %.40s is not supported (BPE only)", type ? type : "(none)"); goto out; }
    if (pre && !json_is_null(pre)) { fail(&e, "pre_tokenizer is not supported"); goto out; }
    if (drop && !json_is_null(drop) && json_number_value(drop) != 0.0) { fail(&e, "BPE dropout is not supported"); goto out; }
    if ((cs && *cs) || (ew && *ew)) { fail(&e, "BPE subword prefix/suffix is not supported"); goto out; }
    t->fuse_unk = jflag(model, "fuse_unk");
    t->byte_fallback = jflag(model, "byte_fallback");
    t->ignore_merges = jflag(model, "ignore_merges");
    if ((parts ? load_parts(t, parts, &e) : load_vocab(t, model, &e) || load_merges(t, model, &e)) ||
        load_added(t, root, &e) ||
        load_normalizer(t, root, &e) || load_decoder(t, root, &e))
        goto out;
    const char *unk = json_string_value(json_object_get(model, "unk_token"));
    if (unk) t->unk_id = vocab_get(t, unk, strlen(unk));
    if (config && load_config(t, config, config_len, &e)) goto out;
    if (finish(t, &e)) goto out;
    rc = 0;
out:
    json_decref(root);
    if (rc) { tok_free(t); return NULL; }
    return t;
}

tok *tok_load(const char *dir, char *err, size_t errlen)
{
    if (gguf_is_path(dir)) return tok_load_gguf(dir, err, errlen);   /* -m FILE.gguf */
    char path[4096];
    size_t n = 0, cn = 0;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    char *json = read_file(path, TOK_MAX_JSON, &n);
    if (!json) { snprintf(err, errlen, "%s: %s", path, phi3_strerror(errno)); return NULL; }
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    char *cfg = read_file(path, TOK_MAX_JSON, &cn);   /* optional, but not unreadable */
    if (!cfg && errno != ENOENT) {
        snprintf(err, errlen, "%s: %s", path, phi3_strerror(errno));
        free(json);
        return NULL;
    }
    tok *t = tok_load_mem(json, n, cfg, cn, err, errlen);
    free(json);
    free(cfg);
    return t;
}

void tok_free(tok *t)
{
    if (!t) return;
    free(t->pool); free(t->piece_off); free(t->piece_len); free(t->flags);
    free(t->dec_off); free(t->dec_len); free(t->dec_byte);
    free(t->mv_off); free(t->mv_len); free(t->mv_id); free(t->vh);
    free(t->mslot); free(t->merge_new);
    free(t->added); free(t->norm); free(t->drep);
    free(t->eos); free(t->bos);
    free(t);
}

/* ------------------------------------------------------------------ encoding */

/* Priority queue of merge candidates, keys (rank << 32 | position), popped lowest rank
 * first, then leftmost: HF's order. Candidates of one rank mostly arrive left to right,
 * so each rank keeps a FIFO of positions in increasing order (O(1) per push and pop), a
 * small heap orders the non-empty ranks by their FIFO heads, and a candidate that would
 * break a FIFO's order goes to an overflow heap. A 1 MB run of one character thus costs
 * O(1) per merge instead of O(log n) in one huge heap. */
typedef struct mqueue {
    int32_t *head, *tail;                /* [n_merges] FIFO node per rank; -1 = empty */
    int32_t *npos, *nnext; size_t nn;    /* FIFO nodes, never reused within a chunk */
    uint64_t *rh; size_t rn;             /* ranks by their head: one entry per FIFO */
    uint64_t *oh; size_t on;             /* out-of-order candidates */
    size_t cap;                          /* of npos/nnext/rh/oh: 3 per symbol */
} mqueue;

#define CACHE_SLOTS 4096
typedef struct cslot { uint8_t klen, nids; char key[22]; int32_t ids[6]; } cslot;

typedef struct scratch {
    tok_buf norm[2];                     /* normalizer ping-pong buffers */
    int32_t *id, *prev, *next; size_t nsym, cap;
    mqueue q;
    cslot *cache;                        /* chunk cache, for long texts only */
} scratch;

static void sym_add(scratch *sc, int32_t id)
{
    if (sc->nsym == sc->cap) {
        sc->cap = sc->cap ? sc->cap * 2 : 256;
        sc->id = xrealloc(sc->id, sc->cap * sizeof *sc->id);
        sc->prev = xrealloc(sc->prev, sc->cap * sizeof *sc->prev);
        sc->next = xrealloc(sc->next, sc->cap * sizeof *sc->next);
    }
    sc->id[sc->nsym++] = id;
}

static inline void heap_push(uint64_t *h, size_t *n, uint64_t k)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= k) break;
        h[i] = h[p]; i = p;
    }
    h[i] = k;
}

static inline void heap_down(uint64_t *h, size_t n, size_t i)
{
    uint64_t k = h[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && h[c + 1] < h[c]) c++;
        if (h[c] >= k) break;
        h[i] = h[c]; i = c;
    }
    h[i] = k;
}

static void mq_reserve(const tok *t, mqueue *q, size_t m)
{
    if (!q->head) {                      /* all FIFOs are empty between chunks */
        size_t nr = t->n_merges ? t->n_merges : 1;
        q->head = xmalloc(nr * sizeof *q->head);
        q->tail = xmalloc(nr * sizeof *q->tail);
        memset(q->head, 0xff, nr * sizeof *q->head);
    }
    if (q->cap < 3 * m) {                /* pushes: m - 1 initial + 2 per merge */
        q->cap = 3 * m;
        q->npos = xrealloc(q->npos, q->cap * sizeof *q->npos);
        q->nnext = xrealloc(q->nnext, q->cap * sizeof *q->nnext);
        q->rh = xrealloc(q->rh, q->cap * sizeof *q->rh);
        q->oh = xrealloc(q->oh, q->cap * sizeof *q->oh);
    }
    q->nn = q->rn = q->on = 0;
}

static inline void mq_push(mqueue *q, int32_t r, int32_t pos)
{
    uint64_t key = ((uint64_t)r << 32) | (uint32_t)pos;
    int32_t tl = q->tail[r];
    if (q->head[r] >= 0 && pos < q->npos[tl]) { heap_push(q->oh, &q->on, key); return; }
    int32_t nd = (int32_t)q->nn++;
    q->npos[nd] = pos;
    q->nnext[nd] = -1;
    if (q->head[r] < 0) {
        q->head[r] = nd;
        heap_push(q->rh, &q->rn, key);
    } else q->nnext[tl] = nd;
    q->tail[r] = nd;
}

static inline bool mq_pop(mqueue *q, uint64_t *key)
{
    if (q->rn && (!q->on || q->rh[0] <= q->oh[0])) {
        *key = q->rh[0];
        int32_t r = (int32_t)(*key >> 32), nd = q->nnext[q->head[r]];
        q->head[r] = nd;
        if (nd >= 0) q->rh[0] = ((uint64_t)r << 32) | (uint32_t)q->npos[nd];
        else q->rh[0] = q->rh[--q->rn];
        if (q->rn) heap_down(q->rh, q->rn, 0);
        return true;
    }
    if (!q->on) return false;
    *key = q->oh[0];
    q->oh[0] = q->oh[--q->on];
    if (q->on) heap_down(q->oh, q->on, 0);
    return true;
}

static void mq_free(mqueue *q)
{
    free(q->head); free(q->tail); free(q->npos); free(q->nnext); free(q->rh); free(q->oh);
}

/* Merge the symbols of one chunk, O(m log m) at worst for m symbols. A popped candidate
 * is stale if its left symbol was merged away or the pair there now makes a different
 * id (HF's test, which decides ties in the same way). */
static void bpe_merge(const tok *t, scratch *sc, tok_ids *out)
{
    size_t m = sc->nsym;
    if (m == 0) return;
    int32_t *id = sc->id, *pv = sc->prev, *nx = sc->next;
    mqueue *q = &sc->q;
    mq_reserve(t, q, m);
    for (size_t i = 0; i < m; i++) {
        pv[i] = (int32_t)i - 1;
        nx[i] = i + 1 < m ? (int32_t)i + 1 : -1;
        if (i + 1 < m) {
            int32_t r = merge_rank(t, id[i], id[i + 1]);
            if (r >= 0) mq_push(q, r, (int32_t)i);
        }
    }
    uint64_t top;
    while (mq_pop(q, &top)) {
        int32_t r = (int32_t)(top >> 32), i = (int32_t)(uint32_t)top;
        if (id[i] < 0) continue;
        int32_t j = nx[i];
        if (j < 0) continue;
        int32_t cr = merge_rank(t, id[i], id[j]);
        if (cr < 0 || t->merge_new[cr] != t->merge_new[r]) continue;
        id[i] = t->merge_new[r];
        id[j] = -1;
        nx[i] = nx[j];
        if (nx[j] >= 0) pv[nx[j]] = i;
        if (pv[i] >= 0) {
            int32_t r2 = merge_rank(t, id[pv[i]], id[i]);
            if (r2 >= 0) mq_push(q, r2, pv[i]);
        }
        if (nx[i] >= 0) {
            int32_t r2 = merge_rank(t, id[i], id[nx[i]]);
            if (r2 >= 0) mq_push(q, r2, i);
        }
    }
    for (int32_t i = 0; i >= 0; i = nx[i]) ids_push(out, id[i]);   /* symbol 0 survives */
    sc->nsym = 0;
}

/* One chunk: initial symbols (chars; else byte fallback; else unk, fused), merged. */
static void bpe_chunk(const tok *t, const char *s, size_t n, scratch *sc, tok_ids *out)
{
    bool last_unk = false;
    sc->nsym = 0;
    for (size_t i = 0; i < n;) {
        uint8_t c = (uint8_t)s[i];
        size_t cl = (size_t)u8len(c);
        int32_t id = c < 0x80 ? t->ascii_id[c] : vocab_get(t, s + i, cl);
        if (id >= 0) {
            sym_add(sc, id); last_unk = false;
        } else {
            bool bytes = t->byte_fallback;
            for (size_t k = 0; k < cl && bytes; k++) bytes = t->byte_id[(uint8_t)s[i + k]] >= 0;
            if (bytes) {
                for (size_t k = 0; k < cl; k++) sym_add(sc, t->byte_id[(uint8_t)s[i + k]]);
                last_unk = false;
            } else if (!(t->fuse_unk && last_unk)) {
                sym_add(sc, t->unk_id); last_unk = true;
            }
        }
        i += cl;
    }
    bpe_merge(t, sc, out);
}

/* The same through a small direct-mapped cache of short chunks (prose repeats its words;
 * HF keeps a word cache too). Exact: a chunk's ids depend only on its bytes. */
static void bpe_chunk_cached(const tok *t, const char *s, size_t n, scratch *sc, tok_ids *out)
{
    if (!sc->cache || n > sizeof sc->cache->key) { bpe_chunk(t, s, n, sc, out); return; }
    cslot *c = &sc->cache[hash_bytes(s, n) & (CACHE_SLOTS - 1)];
    if (c->klen == n && memcmp(c->key, s, n) == 0) {
        for (int k = 0; k < c->nids; k++) ids_push(out, c->ids[k]);
        return;
    }
    size_t before = out->n;
    bpe_chunk(t, s, n, sc, out);
    if (out->n - before <= sizeof c->ids / sizeof c->ids[0]) {
        c->klen = (uint8_t)n;
        memcpy(c->key, s, n);
        c->nids = (uint8_t)(out->n - before);
        memcpy(c->ids, out->v + before, c->nids * sizeof *c->ids);
    }
}

/* One normalized word, split into chunks at the marker boundaries ("x|▁"). */
static void bpe_word(const tok *t, const char *s, size_t n, scratch *sc, tok_ids *out)
{
    if (t->ignore_merges) {
        int32_t id = vocab_get(t, s, n);
        if (id >= 0) { ids_push(out, id); return; }
    }
    const size_t ml = (size_t)t->mark_len;
    if (!ml) { bpe_chunk(t, s, n, sc, out); return; }
    if (n >= 1024 && !sc->cache) sc->cache = xcalloc(CACHE_SLOTS, sizeof *sc->cache);
    const char *mk = t->mark;
    for (size_t cs = 0; cs < n;) {
        size_t i = cs, ce = n;
        while (i + ml <= n && memcmp(s + i, mk, ml) == 0) i += ml;    /* leading markers */
        while (i < n) {                   /* next marker (a lead byte: input is UTF-8) */
            const char *p = memchr(s + i, mk[0], n - i);
            if (!p) break;
            i = (size_t)(p - s);
            if (i + ml <= n && memcmp(p, mk, ml) == 0) { ce = i; break; }
            i++;
        }
        maybe_flush(out);
        bpe_chunk_cached(t, s + cs, ce - cs, sc, out);
        cs = ce;
    }
}

/* Normalize one text segment (between added tokens) and BPE it. */
static void encode_segment(const tok *t, const char *s, size_t n, scratch *sc, tok_ids *out)
{
    if (n == 0) return;                  /* Prepend leaves an empty string empty */
    const char *cur = s; size_t cn = n;
    int w = 0;
    for (int k = 0; k < t->n_norm; k++) {
        const norm_op *op = &t->norm[k];
        tok_buf *b = &sc->norm[w];
        b->n = 0;
        /* Exact size up front: a long text's normalized copy without doubling slack. */
        size_t need = cn + 1;
        if (op->kind == N_PREPEND) need += op->a_len;
        else if (op->b_len > op->a_len && op->a_len > 0) {
            const char *a = P(t, op->a_off);
            for (size_t i = 0; i + op->a_len <= cn; i++)
                if (cur[i] == a[0] && memcmp(cur + i, a, op->a_len) == 0) {
                    need += op->b_len - op->a_len;
                    i += op->a_len - 1;
                }
        }
        if (b->cap < need) {
            b->p = xrealloc(b->p, need);
            b->cap = need;
        }
        if (op->kind == N_PREPEND) {
            if (cn) buf_add(b, P(t, op->a_off), op->a_len);
            buf_add(b, cur, cn);
        } else {
            const char *a = P(t, op->a_off);
            size_t an = op->a_len, run = 0;
            for (size_t i = 0; i < cn;) {
                if (cur[i] == a[0] && i + an <= cn && memcmp(cur + i, a, an) == 0) {
                    buf_add(b, cur + run, i - run);
                    buf_add(b, P(t, op->b_off), op->b_len);
                    i += an; run = i;
                } else i++;
            }
            buf_add(b, cur + run, cn - run);
        }
        cur = b->p ? b->p : ""; cn = b->n;
        w ^= 1;
        /* The buffer the op read from is free now: for a long text, really free it. */
        if (k > 0 && sc->norm[w].cap > (1u << 20)) tok_buf_free(&sc->norm[w]);
    }
    bpe_word(t, cur, cn, sc, out);
}

/* Whitespace run at s[i..): end offset. */
static size_t skip_ws(const char *s, size_t n, size_t i)
{
    while (i < n) {
        int l;
        if (!is_ws(u8dec((const uint8_t *)s + i, &l))) break;
        i += (size_t)l;
    }
    return i;
}

/* Start of the whitespace run that ends at s[..i), not before lo. */
static size_t ws_back(const char *s, size_t lo, size_t i)
{
    while (i > lo) {
        size_t j = i - 1;
        while (j > lo && ((uint8_t)s[j] & 0xC0) == 0x80) j--;
        int l;
        if (!is_ws(u8dec((const uint8_t *)s + j, &l))) break;
        i = j;
    }
    return i;
}

static uint32_t char_before(const char *s, size_t i)
{
    size_t j = i - 1;
    while (j > 0 && ((uint8_t)s[j] & 0xC0) == 0x80) j--;
    int l;
    return u8dec((const uint8_t *)s + j, &l);
}

/* Leftmost-longest added token starting at s[i], or -1. */
static int match_added(const tok *t, const char *s, size_t n, size_t i)
{
    int best = -1;
    for (int k = 0; k < t->n_added; k++) {
        const added *a = &t->added[k];
        if (a->len <= n - i && (best < 0 || a->len > t->added[best].len) &&
            memcmp(s + i, P(t, a->off), a->len) == 0)
            best = k;
    }
    return best;
}

int tok_encode(const tok *t, const char *s, size_t n, unsigned flags, tok_enc_state *st,
               tok_ids *out, long *bad_off)
{
    long bad = tok_utf8_check(s, n);
    if (bad >= 0) { if (bad_off) *bad_off = bad; return -1; }
    size_t seg = 0;
    if (st && st->skip_ws) {
        seg = skip_ws(s, n, 0);
        if (seg == n) return 0;          /* all swallowed: keep swallowing */
        st->skip_ws = false;
    }
    scratch sc = {0};
    bool tail_strip = false;
    for (size_t i = seg; i < n;) {
        if (!t->added_first[(uint8_t)s[i]]) { i++; continue; }
        int k = match_added(t, s, n, i);
        if (k < 0) { i++; continue; }
        const added *a = &t->added[k];
        size_t start = i, stop = i + a->len;
        i = stop;                         /* the match is consumed even when not used */
        if (a->special && !(flags & TOK_SPECIAL)) continue;
        if (a->single_word && ((start > 0 && is_word(char_before(s, start))) ||
                               (stop < n && is_word(u8dec((const uint8_t *)s + stop, &(int){0})))))
            continue;
        if (a->lstrip) start = ws_back(s, seg, start);
        if (a->rstrip) stop = skip_ws(s, n, stop);
        encode_segment(t, s + seg, start - seg, &sc, out);
        maybe_flush(out);
        ids_push(out, a->id);
        seg = i = stop;
        tail_strip = a->rstrip && stop == n;
    }
    if (seg < n) { encode_segment(t, s + seg, n - seg, &sc, out); tail_strip = false; }
    if (st) st->skip_ws = tail_strip;
    tok_buf_free(&sc.norm[0]); tok_buf_free(&sc.norm[1]);
    free(sc.id); free(sc.prev); free(sc.next);
    mq_free(&sc.q);
    free(sc.cache);
    return 0;
}

/* ------------------------------------------------------------------ decoding */

static const char FFFD[3] = {'\xEF', '\xBF', '\xBD'};

void tok_dec_init(tok_dec *d, const tok *t, unsigned flags)
{
    memset(d, 0, sizeof *d);
    d->t = t;
    d->flags = flags;
    d->strip_left = t->strip_start;
}

/* Append complete text, applying the sequence-start strip. */
static void emit(tok_dec *d, const char *s, size_t n, tok_buf *out)
{
    const tok *t = d->t;
    while (d->strip_left > 0 && n > 0) {
        if (n >= (size_t)t->strip_len && memcmp(s, t->strip_ch, (size_t)t->strip_len) == 0) {
            s += t->strip_len; n -= (size_t)t->strip_len; d->strip_left--;
        } else d->strip_left = 0;
    }
    if (n) buf_add(out, s, n);
}

static void flush_pending(tok_dec *d, tok_buf *out)
{
    for (int k = 0; k < d->npend; k++) emit(d, FFFD, 3, out);
    d->npend = 0;
}

/* One byte of byte-fallback output: assemble UTF-8, release whole characters only. */
static void byte_in(tok_dec *d, uint8_t b, tok_buf *out)
{
    if (d->npend) {
        uint8_t lead = d->pend[0], lo = 0x80, hi = 0xBF;
        if (d->npend == 1) {
            if (lead == 0xE0) lo = 0xA0;
            if (lead == 0xED) hi = 0x9F;
            if (lead == 0xF0) lo = 0x90;
            if (lead == 0xF4) hi = 0x8F;
        }
        if (b >= lo && b <= hi) {
            d->pend[d->npend++] = b;
            if (d->npend == d->need) { d->npend = 0; emit(d, (char *)d->pend, (size_t)d->need, out); }
            return;
        }
        flush_pending(d, out);            /* b cannot continue: it starts afresh */
    }
    if (b < 0x80) emit(d, (char *)&b, 1, out);
    else if (b >= 0xC2 && b <= 0xF4) {
        d->pend[0] = b; d->npend = 1;
        d->need = b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
    } else emit(d, FFFD, 3, out);
}

/* HF rule: is run[run_ok..) still the start of a valid character? Advances run_ok over
 * whole characters; false once the run cannot be valid UTF-8 whatever follows. */
static bool run_prefix_ok(tok_dec *d)
{
    const uint8_t *p = (const uint8_t *)d->run.p;
    size_t n = d->run.n;
    while (d->run_ok < n) {
        const uint8_t *q = p + d->run_ok;
        size_t left = n - d->run_ok;
        uint8_t c = q[0];
        if (c < 0x80) { d->run_ok++; continue; }
        if (c < 0xC2 || c > 0xF4) return false;
        size_t need = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        for (size_t k = 1; k < need && k < left; k++) {
            uint8_t lo = 0x80, hi = 0xBF;
            if (k == 1 && c == 0xE0) lo = 0xA0;
            if (k == 1 && c == 0xED) hi = 0x9F;
            if (k == 1 && c == 0xF0) lo = 0x90;
            if (k == 1 && c == 0xF4) hi = 0x8F;
            if (q[k] < lo || q[k] > hi) return false;
        }
        if (left < need) return true;         /* valid so far, incomplete */
        d->run_ok += need;
    }
    return true;
}

/* HF rule: the run ends (a non-byte token or the end of the sequence). */
static void run_flush(tok_dec *d, tok_buf *out)
{
    if (d->run.n) {
        if (!d->run_bad && d->run_ok == d->run.n) emit(d, d->run.p, d->run.n, out);
        else for (size_t k = 0; k < d->run.n; k++) emit(d, FFFD, 3, out);
    }
    d->run.n = 0;
    d->run_ok = 0;
    d->run_bad = false;
}

static void run_byte(tok_dec *d, uint8_t b, tok_buf *out)
{
    if (d->run_bad) { emit(d, FFFD, 3, out); return; }
    buf_add(&d->run, &b, 1);
    if (run_prefix_ok(d)) return;
    for (size_t k = 0; k < d->run.n; k++) emit(d, FFFD, 3, out);
    d->run.n = 0;
    d->run_ok = 0;
    d->run_bad = true;            /* later bytes of this run: U+FFFD each, at once */
}

int tok_dec_push(tok_dec *d, int32_t id, tok_buf *out)
{
    const tok *t = d->t;
    if (id < 0 || id >= t->n_vocab || !(t->flags[id] & F_PRESENT)) return -1;
    if ((d->flags & TOK_SKIP_SPECIAL) && (t->flags[id] & F_SPECIAL)) return 0;
    bool lenient = d->flags & TOK_LENIENT_BYTES;
    if (t->dec_byte[id] >= 0) {
        if (lenient) byte_in(d, (uint8_t)t->dec_byte[id], out);
        else run_byte(d, (uint8_t)t->dec_byte[id], out);
        return 0;
    }
    if (lenient) flush_pending(d, out);
    else run_flush(d, out);
    emit(d, P(t, t->dec_off[id]), t->dec_len[id], out);
    return 0;
}

void tok_dec_end(tok_dec *d, tok_buf *out)
{
    flush_pending(d, out);
    run_flush(d, out);
    tok_buf_free(&d->run);
    d->strip_left = d->t->strip_start;
}

int tok_decode(const tok *t, const int32_t *ids, size_t n, unsigned flags, tok_buf *out,
               size_t *bad_index)
{
    tok_dec d;
    tok_dec_init(&d, t, flags);
    for (size_t i = 0; i < n; i++)
        if (tok_dec_push(&d, ids[i], out) < 0) { if (bad_index) *bad_index = i; return -1; }
    tok_dec_end(&d, out);
    return 0;
}
