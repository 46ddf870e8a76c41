/* jscan_fuzz.c: libFuzzer target for the JSON pull scanner (embed/jscan.c) behind the
 * safetensors header and the shard index: never a read past the text, and the same
 * verdict as jansson on whether the text is one JSON value (where jansson's own limits,
 * oversized numbers, nesting past 64 and NUL bytes, do not decide). */
#include "embed/jscan.h"
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size ? size : 1);     /* exact size: ASan sees any overrun */
    if (!text) return 0;
    memcpy(text, data, size);
    jscan j;
    js_init(&j, text, size);
    int mine = js_skip(&j) == 0 && js_end(&j) == 0;
    json_error_t je;
    json_t *v = json_loadb(text, size, JSON_DECODE_ANY, &je);
    int theirs = v != NULL;
    json_decref(v);
    int limits = strstr(j.why, "nesting") || strstr(je.text, "too big") || strstr(je.text, "overflow") ||
                 strstr(je.text, "maximum") || strstr(je.text, "depth") ||
                 memchr(text, 0, size) != NULL;   /* jansson ends a buffer at a NUL byte */
    if (mine != theirs && !limits) abort();
    /* Every string the scanner decodes fits the raw length it reports. */
    js_init(&j, text, size);
    if (js_peek(&j) == '"') {
        jscan probe = j;
        size_t raw = 0, len = 0;
        if (js_string(&probe, NULL, NULL, &raw) == 0) {
            char *out = malloc(raw + 1);
            if (out && js_string(&j, out, &len, NULL) == 0 && len > raw) abort();
            free(out);
        }
    }
    free(text);
    return 0;
}
