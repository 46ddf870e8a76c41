/* tokjson_fuzz.c: libFuzzer target for loading tokenizer.json (untrusted JSON): any bytes
 * give a tokenizer or an error message, never a crash, hang or huge allocation; a
 * tokenizer that loads must then encode and (stream-)decode without trouble, with
 * streamed output equal to the one-shot decode. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tok/tokenizer.h"

static const char *const texts[] = {
    "", " ", "Hello world", "a  b\tc\n", "<X> ab [W] abc", "\xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "\xff bad",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    tok *t = tok_load_mem((const char *)data, size, NULL, 0, err, sizeof err);
    if (!t) return 0;
    tok_enc_state st = {false};
    for (size_t k = 0; k < sizeof texts / sizeof *texts; k++) {
        for (unsigned fl = 0; fl < 2; fl++) {
            tok_ids ids = {0};
            long bad;
            if (tok_encode(t, texts[k], strlen(texts[k]), fl, &st, &ids, &bad) < 0) continue;
            tok_buf one = {0}, str = {0};
            size_t bi;
            if (tok_decode(t, ids.v, ids.n, fl, &one, &bi) == 0) {
                tok_dec d;
                tok_dec_init(&d, t, fl);
                for (size_t i = 0; i < ids.n; i++) tok_dec_push(&d, ids.v[i], &str);
                tok_dec_end(&d, &str);
                if (one.n != str.n || (one.n && memcmp(one.p, str.p, one.n) != 0)) abort();
            }
            for (size_t i = 0; i < ids.n; i++) tok_piece(t, ids.v[i], NULL);
            tok_buf_free(&one); tok_buf_free(&str); tok_ids_free(&ids);
        }
    }
    tok_free(t);
    return 0;
}
