/* quantize_mix.c: the per-tensor types of phi3-quantize's -t choices, as llama.cpp's
 * quantizer picks them for Phi-3 (llama_tensor_get_type): the logits tensor gets Q6_K
 * unless the file is Q8_0; Q4_K_M puts Q5_K in attn_qkv and Q6_K in the ffn_down of the
 * layers use_more_bits picks. */
#include "embed/quantize_mix.h"
#include "embed/gguf.h"
#include "embed/quant.h"
#include <stdio.h>
#include <string.h>

static const quant_mix mixes[] = {
    {"F32", GGML_F32, 0, 0},   {"F16", GGML_F16, 1, 0},    {"BF16", GGML_BF16, 32, 0},
    {"Q8_0", GGML_Q8_0, 7, 1}, {"Q4_0", GGML_Q4_0, 2, 1}, {"Q4_K_M", GGML_Q4_K, 15, 1},
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

const char *quantize_mix_names(void) { return "F32, F16, BF16, Q8_0, Q4_0 or Q4_K_M"; }

/* llama.cpp's use_more_bits: the first and last eighth of the layers and every third
 * one in between. */
static int more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

uint32_t quantize_mix_type(const quant_mix *mix, const char *name, int is_output, int n_layers, uint64_t cols)
{
    uint32_t t = mix->base;
    int layer = -1;
    sscanf(name, "blk.%d.", &layer);
    if (is_output && mix->quantized && t != GGML_Q8_0) t = GGML_Q6_K;
    else if (mix->base == GGML_Q4_K && strstr(name, "attn_qkv.weight")) t = GGML_Q5_K;
    else if (mix->base == GGML_Q4_K && strstr(name, "ffn_down") && layer >= 0 && more_bits(layer, n_layers))
        t = GGML_Q6_K;
    /* Rows that are not whole blocks: llama.cpp falls back to Q5_0/Q5_1/Q8_0 for the K
     * types; this project reads neither Q5_0 nor Q5_1, so every fallback is Q8_0, and F16
     * when not even that fits. */
    if (cols % gguf_type_block(t)) t = GGML_Q8_0;
    if (cols % gguf_type_block(t)) t = GGML_F16;
    return t;
}

int quantize_mix_row(uint32_t type, const float *row, uint8_t *out, int64_t cols)
{
    st_dtype d = quant_from_ggml(type);
    if (d == ST_NDTYPE) return -1;
    return quant_quantize_row(d, row, out, cols);
}
