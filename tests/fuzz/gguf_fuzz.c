/* gguf_fuzz.c: libFuzzer target for the GGUF reader (embed/gguf.c) and what is built on
 * it: any bytes must give a validated file or an error, never an out-of-bounds read.
 * Every tensor accepted is read end to end, every metadata value through the getters,
 * then the phi3 config and the tokenizer are built from the metadata. */
#include "embed/gguf.h"
#include "embed/model.h"
#include "tok/tok_gguf.h"
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);     /* exactly size bytes: ASan sees overruns */
    if (!buf) return 0;
    memcpy(buf, data, size);
    gguf_file g;
    char err[512];
    if (gguf_parse(buf, size, &g, err, sizeof err) == 0) {
        volatile uint8_t sink = 0;
        for (size_t i = 0; i < g.n_t; i++) {
            const uint8_t *p = g.t[i].data;
            for (uint64_t k = 0; k < g.t[i].nbytes; k++) sink ^= p[k];
            sink ^= (uint8_t)(gguf_find(&g, g.t[i].name) == &g.t[i]);
        }
        for (size_t i = 0; i < g.n_kv; i++) {
            const gguf_kv *kv = &g.kv[i];
            int64_t iv;
            double d;
            bool b;
            const char *s;
            size_t len;
            gguf_get_int(&g, kv->key, INT64_MIN, INT64_MAX, &iv, err, sizeof err);
            gguf_get_float(&g, kv->key, &d, err, sizeof err);
            gguf_get_bool(&g, kv->key, &b, err, sizeof err);
            if (gguf_get_str(&g, kv->key, &s, &len, err, sizeof err) == 1)
                for (size_t k = 0; k < len; k++) sink ^= (uint8_t)s[k];
            if (kv->type == GGUF_ARR && kv->arr_type == GGUF_STR)
                for (uint64_t k = 0; k < kv->n; k++) {
                    gguf_arr_str(kv, k, &s, &len);
                    if (len) sink ^= (uint8_t)(s[0] ^ s[len - 1]);
                }
            else if (gguf_arr_is_num(kv))
                for (uint64_t k = 0; k < kv->n; k++) sink ^= (uint8_t)(gguf_arr_num(kv, k) > 0);
        }
        (void)sink;
        phi3_config c;
        model_gguf_config(&g, &c, err, sizeof err);
        model_config_free(&c);
        tok *t = tok_from_gguf(&g, err, sizeof err);
        tok_free(t);
        gguf_close(&g);
    }
    free(buf);
    return 0;
}
