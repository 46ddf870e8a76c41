/* tok_test.c: tokenizer module tests on a tiny hand-made tokenizer.json, for the paths
 * the Phi-3 fixtures do not reach (lstrip, single_word, unk fusing, stale merge entries,
 * loader errors); expected ids worked out by hand from the tokenizers library's rules. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/tap.h"
#include "tok/tokenizer.h"

/* vocab: <unk>0 ▁1 a2 b3 c4 ab5 ▁ab6 bc7 ▁a8; merges (rank order): a+b, ▁+ab, b+c, ▁+a.
 * Added: <X> (9, special, lstrip), [W] (10, not special, single_word, rstrip). */
#define VOCAB "\"vocab\":{\"<unk>\":0,\"\u2581\":1,\"a\":2,\"b\":3,\"c\":4,\"ab\":5,\"\u2581ab\":6,\"bc\":7,\"\u2581a\":8}"
#define TINY(merges, extra) "{\"added_tokens\":[" \
    "{\"id\":9,\"content\":\"<X>\",\"lstrip\":true,\"rstrip\":false,\"special\":true}," \
    "{\"id\":10,\"content\":\"[W]\",\"single_word\":true,\"rstrip\":true,\"special\":false}]," \
    "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"\u2581\"}," \
    "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\u2581\"}]}," \
    "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"\u2581\"},\"content\":\" \"}," \
    "{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]}," \
    extra "\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":true," VOCAB ",\"merges\":" merges "}}"
static const char tiny[] = TINY("[\"a b\",\"\u2581 ab\",\"b c\",\"\u2581 a\"]", "");

static tok *T;

static int enc_is(const char *text, unsigned flags, const int32_t *want, size_t n)
{
    tok_ids ids = {0};
    long bad;
    if (tok_encode(T, text, strlen(text), flags, NULL, &ids, &bad) < 0) return 0;
    int same = ids.n == n && (n == 0 || memcmp(ids.v, want, n * sizeof *want) == 0);
    if (!same) {
        printf("# %s ->", text);
        for (size_t i = 0; i < ids.n; i++) printf(" %d", ids.v[i]);
        printf("\n");
    }
    tok_ids_free(&ids);
    return same;
}
#define ENC(text, flags, ...) enc_is(text, flags, (const int32_t[]){__VA_ARGS__}, \
    sizeof((const int32_t[]){__VA_ARGS__}) / sizeof(int32_t))

static int dec_is(const int32_t *ids, size_t n, unsigned flags, const char *want)
{
    tok_buf b = {0};
    int okk = tok_decode(T, ids, n, flags, &b, NULL) == 0 && b.n == strlen(want) &&
              memcmp(b.p ? b.p : "", want, b.n) == 0;
    if (!okk) printf("# decoded [%.*s]\n", (int)b.n, b.p ? b.p : "");
    tok_buf_free(&b);
    return okk;
}
#define DEC(want, flags, ...) dec_is((const int32_t[]){__VA_ARGS__}, \
    sizeof((const int32_t[]){__VA_ARGS__}) / sizeof(int32_t), flags, want)

static size_t *flush_calls;

static void flush_into(tok_ids *ids, void *ctx)
{
    tok_ids *dst = ctx;
    dst->v = realloc(dst->v, (dst->n + ids->n + 1) * sizeof *dst->v);
    memcpy(dst->v + dst->n, ids->v, ids->n * sizeof *ids->v);
    dst->n += ids->n;
    (*flush_calls)++;
}

static int load_fails(const char *json, const char *needle)
{
    char err[256];
    tok *t = tok_load_mem(json, strlen(json), NULL, 0, err, sizeof err);
    if (t) { tok_free(t); return 0; }
    if (!strstr(err, needle)) { printf("# error: %s\n", err); return 0; }
    return 1;
}

int main(void)
{
    char err[256];
    T = tok_load_mem(tiny, strlen(tiny), "{\"eos_token\":{\"content\":\"<X>\"}}", 31, err, sizeof err);
    ok(T != NULL, "tiny tokenizer loads (%s)", T ? "" : err);
    if (!T) return tap_done();
    ok(tok_n_vocab(T) == 11, "n_vocab counts added tokens");
    ok(tok_find(T, "\u2581ab", 5) == 6 && tok_find(T, "<X>", 3) == 9 && tok_find(T, "zz", 2) == -1, "tok_find");
    ok(tok_is_special(T, 9) && !tok_is_special(T, 10) && tok_is_added(T, 10) && !tok_is_added(T, 6), "special / added flags");
    ok(tok_piece(T, 11, NULL) == NULL && tok_piece(T, -1, NULL) == NULL && strcmp(tok_piece(T, 8, NULL), "\u2581a") == 0, "tok_piece");
    ok(tok_eos_token(T) && strcmp(tok_eos_token(T), "<X>") == 0 && !tok_add_bos(T), "eos_token from the config object form");

    /* ▁ a b c: a+b (rank 0), then ▁+ab (1); the queued b+c (2) and ▁+a (3) are stale */
    ok(ENC("abc", 0, 6, 4), "merges by rank, stale queue entries skipped");
    ok(enc_is("", 0, NULL, 0), "empty text: no ids, no ▁");
    ok(ENC("xyz", 0, 1, 0), "unknown chars, no byte fallback: one fused <unk>");
    ok(ENC("ab  <X>c", TOK_SPECIAL, 6, 9, 1, 4), "lstrip swallows the spaces before <X>");
    ok(ENC("ab  <X>c", 0, 6, 1, 1, 0, 4), "special <X> is text without TOK_SPECIAL");
    ok(ENC("a[W]b", 0, 8, 0, 3), "single_word: not matched inside a word");
    ok(ENC("a [W]  b", 0, 8, 1, 10, 1, 3), "single_word match (not special: always), rstrip");

    tok_enc_state st = {false};
    tok_ids ids = {0};
    long bad;
    tok_encode(T, "[W]", 3, 0, &st, &ids, &bad);
    ok(st.skip_ws, "rstrip token at the end carries over");
    tok_encode(T, "  ", 2, 0, &st, &ids, &bad);
    ok(st.skip_ws && ids.n == 1, "an all-space piece is swallowed and keeps the carry");
    tok_encode(T, " ab", 3, 0, &st, &ids, &bad);
    ok(!st.skip_ws && ids.n == 2 && ids.v[1] == 6, "next piece loses its leading spaces");
    ids.n = 0;
    ok(tok_encode(T, "a\xc3(", 3, 0, NULL, &ids, &bad) == -1 && bad == 1 && ids.n == 0, "invalid UTF-8 refused with offset");
    tok_ids_free(&ids);

    ok(tok_utf8_check("", 0) == -1 && tok_utf8_check("\xf0\x9f\x99\x82", 4) == -1, "utf8: valid");
    ok(tok_utf8_check("ab\xf0\x9f\x99", 5) == 2, "utf8: truncated");
    ok(tok_utf8_check("\xe0\x80\x80", 3) == 0 && tok_utf8_check("\xc1\xbf", 2) == 0, "utf8: overlong");
    ok(tok_utf8_check("x\xed\xa0\x80", 4) == 1 && tok_utf8_check("\xf4\x90\x80\x80", 4) == 0, "utf8: surrogate, > U+10FFFF");

    ok(DEC("abc", 0, 6, 4), "decode: ▁ -> space, one leading space stripped");
    ok(DEC(" ab", 0, 1, 6), "decode: only one space stripped");
    ok(DEC("<X> ab", 0, 9, 6), "decode: control token text");
    ok(DEC("ab", TOK_SKIP_SPECIAL, 9, 6), "decode: skip special, strip applies to what is left");
    ok(DEC("[W]", TOK_SKIP_SPECIAL, 10), "decode: non-special added token kept");
    tok_buf b = {0};
    ok(tok_decode(T, (const int32_t[]){6, 11}, 2, 0, &b, &(size_t){0}) == -1, "decode: id outside vocab refused");
    tok_buf_free(&b);
    tok_free(T);

    /* byte fallback: the same plus <0xNN> pieces 11..266 */
    {
        const char *cut = strstr(tiny, "\"\u2581a\":8") + strlen("\"\u2581a\":8");
        const char *fu = strstr(tiny, "\"fuse_unk\":true");
        char *j = malloc(strlen(tiny) + 256 * 16 + 64);
        size_t n = (size_t)(fu - tiny);
        memcpy(j, tiny, n);
        n += (size_t)sprintf(j + n, "\"byte_fallback\":true,");
        memcpy(j + n, fu, (size_t)(cut - fu));
        n += (size_t)(cut - fu);
        for (int x = 0; x < 256; x++) n += (size_t)sprintf(j + n, ",\"<0x%02X>\":%d", x, 11 + x);
        strcpy(j + n, cut);
        T = tok_load_mem(j, strlen(j), NULL, 0, err, sizeof err);
        ok(T != NULL, "byte_fallback variant loads (%s)", T ? "" : err);
        if (T) {
            ok(ENC("\xc3\xa9", 0, 1, 11 + 0xc3, 11 + 0xa9), "é -> ▁ + its two UTF-8 bytes");
            ok(DEC("\xc3\xa9", 0, 11 + 0xc3, 11 + 0xa9), "bytes joined back into é");
            ok(DEC("\xef\xbf\xbd" " ab", 0, 11 + 0xc3, 6), "interrupted character -> U+FFFD (then no strip)");
            ok(DEC("\xef\xbf\xbd\xef\xbf\xbd", 0, 11 + 0xe6, 11 + 0x97), "truncated at the end -> one U+FFFD per byte");
            ok(DEC("", 0, 11 + 0x20), "a space byte is stripped at the start too");
            tok_dec d;
            tok_buf o = {0};
            tok_dec_init(&d, T, 0);
            tok_dec_push(&d, 11 + 0xf0, &o); tok_dec_push(&d, 11 + 0x9f, &o); tok_dec_push(&d, 11 + 0x99, &o);
            tok_dec_push(&d, 11 + 0x82, &o);
            int held = o.n == 0;
            tok_dec_push(&d, 2, &o);
            ok(held && o.n == 5 && memcmp(o.p, "\xf0\x9f\x99\x82" "a", 5) == 0,
               "stream: 🙂 held until the byte run ends (HF decodes a run whole)");
            tok_dec_end(&d, &o);
            o.n = 0;
            tok_dec_init(&d, T, TOK_LENIENT_BYTES);
            tok_dec_push(&d, 11 + 0xf0, &o); tok_dec_push(&d, 11 + 0x9f, &o); tok_dec_push(&d, 11 + 0x99, &o);
            held = o.n == 0;
            tok_dec_push(&d, 11 + 0x82, &o);
            ok(held && o.n == 4 && memcmp(o.p, "\xf0\x9f\x99\x82", 4) == 0, "stream, lenient: 🙂 out with its 4th byte");
            tok_dec_end(&d, &o);
            ok(DEC("\xef\xbf\xbd\xef\xbf\xbd", 0, 11 + 0x31, 11 + 0xfe), "HF: <0x31><0xFE> -> U+FFFD for both bytes");
            ok(DEC("1\xef\xbf\xbd", TOK_LENIENT_BYTES, 11 + 0x31, 11 + 0xfe), "lenient: <0x31><0xFE> -> 1 U+FFFD");
            ok(DEC("\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd ab", 0, 11 + 0xfe, 11 + 0x31, 11 + 0x31, 6),
               "HF: a run known bad stays U+FFFD per byte up to the next token");
            ok(DEC("\xc3\xa9", TOK_SKIP_SPECIAL, 11 + 0xc3, 9, 11 + 0xa9), "HF: a skipped special token does not end a run");
            ok(DEC("\xef\xbf\xbd<X>\xef\xbf\xbd", 0, 11 + 0xc3, 9, 11 + 0xa9), "HF: a kept one does");
            o.n = 0;
            tok_dec_push(&d, 1, &o); tok_dec_push(&d, 6, &o);
            ok(o.n == 3 && memcmp(o.p, " ab", 3) == 0, "stream: after end, a new sequence strips again");
            tok_buf_free(&o);
            tok_free(T);
        }
        free(j);
    }

    {   /* a flushing tok_ids gives the same ids, in pieces of >= TOK_FLUSH_IDS */
        T = tok_load_mem(tiny, strlen(tiny), NULL, 0, err, sizeof err);
        size_t n = 300000 * 4;
        char *txt = malloc(n + 1);
        for (size_t i = 0; i < n; i += 4) memcpy(txt + i, i % 12 ? "ab c" : "<X>a", 4);
        txt[n] = 0;
        tok_ids whole = {0}, piece = {0}, got = {0};
        long badoff;
        size_t calls = 0;
        tok_encode(T, txt, n, TOK_SPECIAL, NULL, &whole, &badoff);
        piece.ctx = &got;
        piece.flush = flush_into;
        flush_calls = &calls;
        tok_encode(T, txt, n, TOK_SPECIAL, NULL, &piece, &badoff);
        flush_into(&piece, &got);
        calls--;
        ok(whole.n > 2 * TOK_FLUSH_IDS && calls >= 2 && got.n == whole.n &&
           memcmp(got.v, whole.v, whole.n * sizeof *whole.v) == 0,
           "flushing encode: same %zu ids in %zu flushes", whole.n, calls);
        tok_ids_free(&whole); tok_ids_free(&piece); tok_ids_free(&got);
        free(txt);
        tok_free(T);
    }

    {   /* tok_load_parts: the same vocabulary and merges as arrays give the same ids; its
         * own checks refuse a repeated piece, a merge index out of range, a merge whose
         * result is not a piece */
        static const char *const pc[] = {"<unk>", "\u2581", "a", "b", "c", "ab", "\u2581ab", "bc", "\u2581a"};
        size_t pl[9];
        int32_t id[9];
        for (int i = 0; i < 9; i++) pl[i] = strlen(pc[i]), id[i] = i;
        int32_t mg[4][2] = {{2, 3}, {1, 5}, {3, 4}, {1, 2}};
        tok_parts p = {9, 4, pc, pl, id, (const int32_t(*)[2])mg, "pieces"};
        tok *J = tok_load_mem(tiny, strlen(tiny), NULL, 0, err, sizeof err);
        tok *P = tok_load_parts(tiny, strlen(tiny), NULL, 0, &p, err, sizeof err);
        ok(P != NULL, "tok_load_parts loads (%s)", P ? "" : err);
        int same = P != NULL && J != NULL;
        static const char *const txt[] = {"abc", "ab  <X>c", "a [W]  b", "xyz bcab a"};
        for (int k = 0; k < 4 && same; k++) {
            tok_ids x = {0}, y = {0};
            long b1, b2;
            tok_encode(J, txt[k], strlen(txt[k]), TOK_SPECIAL, NULL, &x, &b1);
            tok_encode(P, txt[k], strlen(txt[k]), TOK_SPECIAL, NULL, &y, &b2);
            same = x.n == y.n && (!x.n || !memcmp(x.v, y.v, x.n * sizeof *x.v));
            tok_ids_free(&x);
            tok_ids_free(&y);
        }
        ok(same, "tok_load_parts: the ids of the same tokenizer from JSON");
        tok_free(P);
        tok_free(J);
        static const char *const dup[] = {"<unk>", "a", "b", "a"};
        size_t dl[] = {5, 1, 1, 1};
        tok_parts d = {4, 0, dup, dl, id, NULL, "pieces"};
        P = tok_load_parts(tiny, strlen(tiny), NULL, 0, &d, err, sizeof err);
        ok(!P && strstr(err, "pieces[3]: the same piece as an earlier token"), "tok_load_parts: a repeated piece (%s)", err);
        tok_free(P);
        int32_t far[1][2] = {{2, 9}}, none[1][2] = {{3, 2}};
        p.n_merges = 1, p.merge = (const int32_t(*)[2])far;
        P = tok_load_parts(tiny, strlen(tiny), NULL, 0, &p, err, sizeof err);
        ok(!P && strstr(err, "model.merges[0]: piece not in the vocab"), "tok_load_parts: a merge index out of range (%s)", err);
        tok_free(P);
        p.merge = (const int32_t(*)[2])none;
        P = tok_load_parts(tiny, strlen(tiny), NULL, 0, &p, err, sizeof err);
        ok(!P && strstr(err, "merged piece not in the vocab"), "tok_load_parts: b+a is no piece (%s)", err);
        tok_free(P);
    }

    ok(load_fails("{", "line 1"), "bad JSON");
    ok(load_fails("{\"model\":{\"type\":\"WordPiece\"}}", "not supported"), "non-BPE model");
    ok(load_fails(TINY("[\"a z\"]", ""), "not in the vocab"), "merge of an unknown piece");
    ok(load_fails(TINY("[\"c c\"]", ""), "merged piece not in the vocab"), "merge result not in the vocab");
    ok(load_fails(TINY("[\"a b c\"]", ""), "not two pieces"), "merge string with three pieces");
    ok(load_fails(TINY("[[\"a\"]]", ""), "not a merge"), "merge array of one");
    ok(load_fails(TINY("[]", "\"pre_tokenizer\":{\"type\":\"Metaspace\"},"), "pre_tokenizer"), "pre-tokenizer refused");
    ok(load_fails("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":3000000},\"merges\":[]}}", "bad id"), "giant id refused");
    ok(load_fails("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":0},\"merges\":[]}}", "used twice"), "duplicate id");
    ok(load_fails("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "unk_token"), "no unk and no byte fallback");
    ok(load_fails("{\"added_tokens\":[{\"id\":1,\"content\":\"\"}],\"model\":{\"type\":\"BPE\",\"unk_token\":\"a\",\"vocab\":{\"a\":0},\"merges\":[]}}", "empty content"), "empty added token");
    return tap_done();
}
