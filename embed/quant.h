/* quant.h: ggml's quantized block formats (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K) as llama.cpp's
 * GGUF files hold them: sizes, exact dequantization, our own quantizers, and the
 * ggml type numbers. Layouts (little-endian, packed, f16 = IEEE half):
 *   Q8_0  32 weights,  34 bytes: f16 d, int8 q[32]               w = q * d
 *   Q4_0  32 weights,  18 bytes: f16 d, u8 qs[16]                w = (q - 8) * d
 *         element i < 16 is the low nibble of qs[i], element 16 + i the high one
 *   Q4_K 256 weights, 144 bytes: f16 d, f16 dmin, u8 scales[12], u8 qs[128]
 *         8 sub-blocks of 32 with 6-bit scale sc and min m; w = (d*sc) * q - (dmin*m)
 *   Q5_K 256 weights, 176 bytes: f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128]
 *         as Q4_K with a fifth bit from qh
 *   Q6_K 256 weights, 210 bytes: u8 ql[128], u8 qh[64], int8 scales[16], f16 d
 *         16 sub-blocks of 16; w = (d*sc) * (q - 32)
 * Dequantization gives exactly the floats ggml's dequantize_row_* gives (same float
 * operations in the same order, no contraction into FMA). */
#ifndef PHI3_QUANT_H
#define PHI3_QUANT_H
#include "embed/model.h"
#include <stddef.h>
#include <stdint.h>

#define QK8_0 32
#define QK4_0 32
#define QK_K 256
#define Q8_0_BYTES 34
#define Q4_0_BYTES 18
#define Q4_K_BYTES 144
#define Q5_K_BYTES 176
#define Q6_K_BYTES 210

/* 1 for a block type (Q8_0 .. Q6_K), 0 for a plain element type. */
int quant_is_block(st_dtype d);
/* Elements per block: 32 or 256 for block types, 1 for element types, 0 if unknown. */
int quant_block_size(st_dtype d);
/* Bytes per block (per element for element types); 0 if unknown. */
size_t quant_block_bytes(st_dtype d);
/* Bytes of a row of cols elements, valid for every dtype; 0 when cols < 0, cols is not
 * a multiple of the block size, d is unknown, or the size overflows. */
size_t quant_row_bytes(st_dtype d, int64_t cols);

/* dst[0..count) = elements k0 .. k0+count of the row that starts at row (any dtype this
 * file or model_to_f32 knows). For block types k0 and count must be multiples of the
 * block size. */
void quant_dequant_row(st_dtype d, const void *row, float *dst, int64_t k0, int64_t count);

/* Quantize cols floats (a multiple of the block size) into dst (quant_row_bytes(d, cols)
 * bytes). Q8_0 and Q4_0: round-to-nearest with the max-abs scale (ggml's reference
 * scheme); K types: a scale/min search per sub-block, then 6- or 8-bit sub-scales.
 * Also F32, F16 (round to nearest even) and BF16 (round to nearest even). For block
 * types, non-finite inputs give valid blocks of finite values (which ones is
 * unspecified). 0 ok, -1 if d cannot be written. */
int quant_quantize_row(st_dtype d, const float *src, void *dst, int64_t cols);

/* Count the blocks of a row whose f16 scales are not finite (ggml rejects such data). */
int64_t quant_bad_blocks(st_dtype d, const void *row, int64_t cols);

/* f32 -> f16 bits, round to nearest even, overflow to inf, NaN kept NaN. */
uint16_t quant_f32_to_f16(float f);
/* f32 -> bf16 bits, round to nearest even, NaN kept NaN. */
uint16_t quant_f32_to_bf16(float f);

/* ggml_type numbers (as GGUF tensor infos store them) <-> st_dtype. ST_NDTYPE if the
 * number has no st_dtype here; -1 for a dtype without a ggml number. */
st_dtype quant_from_ggml(uint32_t ggml_type);
int quant_to_ggml(st_dtype d);
/* ggml's name for a ggml_type number ("Q4_K", "IQ2_XS", ...), "?" when unknown: for
 * "tensor X: unsupported type IQ2_XS" messages. */
const char *quant_ggml_name(uint32_t ggml_type);

#endif
