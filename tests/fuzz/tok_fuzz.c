/* tok_fuzz.c: libFuzzer target for encoding and decoding arbitrary text with the real
 * Phi-3 tokenizer (tests/fixtures/tiny-longrope, run from the repository root). Checks:
 * invalid UTF-8 is refused, streamed decode == one-shot decode, and decode(encode(x)) == x
 * for text without added-token strings or the ▁ character. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok/tokenizer.h"

static tok *T;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!T) {
        char err[256];
        const char *dir = getenv("PHI3_FUZZ_MODEL");
        T = tok_load(dir ? dir : "tests/fixtures/tiny-longrope", err, sizeof err);
        if (!T) { fprintf(stderr, "tok_fuzz: %s\n", err); abort(); }
    }
    const char *s = (const char *)data;
    for (unsigned fl = 0; fl < 2; fl++) {
        tok_ids ids = {0};
        long bad;
        if (tok_encode(T, s, size, fl, NULL, &ids, &bad) < 0) {
            if (tok_utf8_check(s, size) != bad || bad < 0) abort();
            return 0;
        }
        tok_buf one = {0}, str = {0};
        if (tok_decode(T, ids.v, ids.n, 0, &one, NULL) != 0) abort();
        tok_dec d;
        tok_dec_init(&d, T, 0);
        for (size_t i = 0; i < ids.n; i++) tok_dec_push(&d, ids.v[i], &str);
        tok_dec_end(&d, &str);
        if (one.n != str.n || (one.n && memcmp(one.p, str.p, one.n) != 0)) abort();
        bool plain = !memmem(s, size, "\xe2\x96\x81", 3);
        for (int32_t id = 0; id < tok_n_vocab(T) && plain; id++) {
            size_t pl;
            if (!tok_is_added(T, id)) continue;
            const char *p = tok_piece(T, id, &pl);
            if (memmem(s, size, p, pl)) plain = false;
        }
        if (plain && (one.n != size || (size && memcmp(one.p, s, size) != 0))) abort();
        tok_buf_free(&one); tok_buf_free(&str); tok_ids_free(&ids);
    }
    return 0;
}
