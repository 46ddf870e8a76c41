/* quantize_mix.c: the per-tensor types of phi3-quantize's -t choices. */
#include "embed/quantize_mix.h"
#include "embed/gguf.h"
#include <string.h>

/* Round to nearest even, as torch and numpy convert. */

uint16_t quant_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)(u >> 16 | 0x40);      /* quiet NaN */
    return (uint16_t)((u + 0x7fffu + (u >> 16 & 1)) >> 16);
}

uint16_t quant_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = u >> 16 & 0x8000, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00);                       /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);                      /* >= 65520: inf */
    if (a >= 0x38800000u) {                                                      /* normal */
        uint32_t r = a - 0x38000000u;                                            /* rebias 127 -> 15 */
        return (uint16_t)(sign | ((r + 0xfffu + (r >> 13 & 1)) >> 13));
    }
    if (a < 0x33000000u) return (uint16_t)sign;                                  /* < 2^-25: 0 */
    /* subnormal: the value in units of 2^-24, rounded to nearest even */
    uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
    int shift = 126 - (int)e;                                                    /* 14..24 */
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return (uint16_t)(sign | q);
}

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
