/* quantize_mix.h: what phi3-quantize -t TYPE writes for each tensor (llama.cpp's choice
 * per tensor for its file types), and writing a float32 row in any of those types. */
#ifndef PHI3_QUANTIZE_MIX_H
#define PHI3_QUANTIZE_MIX_H
#include <stdint.h>

typedef struct quant_mix {
    const char *name;          /* "Q4_K_M" */
    uint32_t base;             /* GGML_* of most 2-D weights */
    uint32_t file_type;        /* general.file_type (llama.cpp's llama_ftype) */
    int quantized;
} quant_mix;

/* 0 ok; -1 unknown name. */
int quantize_mix_parse(const char *name, quant_mix *mix);
const char *quantize_mix_names(void);      /* "F32, F16, ..." for messages */
/* The GGML_* type of the 2-D weight NAME (llama.cpp's name; is_output: the tensor that
 * computes the logits, output.weight or a tied token_embd.weight) with cols columns. */
uint32_t quantize_mix_type(const quant_mix *mix, const char *name, int is_output, int n_layers,
                           uint64_t cols);
/* Write cols floats as type (GGML_*) into out. 0 ok; -1 type not writable. */
int quantize_mix_row(uint32_t type, const float *row, uint8_t *out, int64_t cols);

#endif
