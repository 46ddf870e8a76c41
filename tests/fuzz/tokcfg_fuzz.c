/* tokcfg_fuzz.c: libFuzzer target for tokenizer.json and tokenizer_config.json loaded
 * together (both untrusted): the input is the config, a NUL byte, then tokenizer.json
 * (a small valid one when absent, so the config reaches its parser). A tokenizer that
 * loads must encode (with the BOS/EOS strings the config named) and decode, streamed
 * equal to one-shot, without trouble. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tok/tokenizer.h"

static const char tiny[] =
    "{\"added_tokens\":[{\"id\":9,\"content\":\"<X>\",\"lstrip\":true,\"special\":true}],"
    "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"\\u2581\"},"
    "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\\u2581\"}]},"
    "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"\\u2581\"},\"content\":\" \"},"
    "{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]},"
    "\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"vocab\":{\"<unk>\":0,\"\\u2581\":1,\"a\":2,\"b\":3,"
    "\"ab\":4,\"\\u2581ab\":5},\"merges\":[\"a b\",\"\\u2581 ab\"]}}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *z = memchr(data, 0, size);
    size_t clen = z ? (size_t)(z - data) : size;
    const char *json = z ? (const char *)z + 1 : tiny;
    size_t jlen = z ? size - clen - 1 : strlen(tiny);
    char err[256];
    tok *t = tok_load_mem(json, jlen, (const char *)data, clen, err, sizeof err);
    if (!t) return 0;
    const char *texts[4] = {"ab a <X>b", tok_eos_token(t), tok_bos_token(t), "\xf0\x9f\x99\x82 b"};
    for (int k = 0; k < 4; k++) {
        if (!texts[k]) continue;
        for (unsigned fl = 0; fl < 2; fl++) {
            tok_ids ids = {0};
            long bad;
            if (tok_encode(t, texts[k], strlen(texts[k]), fl, NULL, &ids, &bad) == 0) {
                tok_buf one = {0}, str = {0};
                if (tok_decode(t, ids.v, ids.n, fl, &one, NULL) == 0) {
                    tok_dec d;
                    tok_dec_init(&d, t, fl);
                    for (size_t i = 0; i < ids.n; i++) tok_dec_push(&d, ids.v[i], &str);
                    tok_dec_end(&d, &str);
                    if (one.n != str.n || (one.n && memcmp(one.p, str.p, one.n) != 0)) abort();
                }
                tok_buf_free(&one);
                tok_buf_free(&str);
            }
            tok_ids_free(&ids);
        }
        if (texts[k]) tok_find(t, texts[k], strlen(texts[k]));
    }
    tok_add_bos(t);
    tok_free(t);
    return 0;
}
