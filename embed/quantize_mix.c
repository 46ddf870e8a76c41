/* quantize_mix.c: the per-tensor types of phi3-quantize's -t choices. */
#include "embed/quantize_mix.h"
#include "embed/gguf.h"
#include <string.h>

static const quant_mix mixes[] = {
    {"F32", GGML_F32, 0, 0},
    {"F16", GGML_F16, 1, 0},
    {"BF16", GGML_BF16, 32, 0},
};

int quantize_mix_parse(const char *name, quant_mix *mix)
{
    for (size_t i = 0; i < sizeof mixes / sizeof *mixes; i++)
        if (!strcmp(name, mixes[i].name)) {
            *mix = mixes[i];
            return 0;
        }
    return -1;
}

const char *quantize_mix_names(void) { return "F32, F16, BF16"; }

uint32_t quantize_mix_type(const quant_mix *mix, const char *name, int n_layers, uint64_t cols)
{
    (void)name, (void)n_layers, (void)cols;
    return mix->base;
}

int quantize_mix_row(uint32_t type, const float *row, uint8_t *out, int64_t cols)
{
    (void)type, (void)row, (void)out, (void)cols;
    return -1;
}
