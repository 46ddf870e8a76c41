/* config_fuzz.c: libFuzzer target for config.json parsing (model_config_parse): any
 * bytes give a config or one error, never a crash; an accepted config obeys the ranges
 * the forward pass relies on. */
#include "embed/model.h"
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = 0;
    phi3_config c;
    char err[256];
    if (model_config_parse(text, size, &c, err, sizeof err) == 0) {
        if (c.hidden < 2 || c.n_heads < 1 || c.n_kv_heads < 1 || c.n_heads % c.n_kv_heads ||
            c.head_dim * c.n_heads != c.hidden || c.head_dim % 2 || c.n_layers < 1 || c.vocab < 1 ||
            c.intermediate < 1 || c.max_pos < 1 || c.original_max_pos < 1 || c.original_max_pos > c.max_pos ||
            c.sliding_window < 0 || !(c.rms_eps > 0) || !isfinite(c.rms_eps) || !(c.rope_theta > 0) ||
            !isfinite((float)c.rope_theta) || !(c.attn_factor > 0) || !isfinite((float)c.attn_factor))
            abort();
        for (int i = 0; c.rope_longrope && i < c.head_dim / 2; i++)
            if (!(c.short_factor[i] > 0) || !isfinite(c.short_factor[i]) || !(c.long_factor[i] > 0) ||
                !isfinite(c.long_factor[i]))
                abort();
        model_config_free(&c);
    }
    free(text);
    return 0;
}
