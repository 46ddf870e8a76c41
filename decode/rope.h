/* rope.h: rotary position embedding tables (plain RoPE and LongRoPE short/long factors),
 * computed the way transformers computes them (float32 inv_freq, angle = inv_freq * pos
 * rounded to float32, cos/sin times the attention factor), shared by every backend. */
#ifndef PHI3_ROPE_H
#define PHI3_ROPE_H
#include "embed/model.h"

/* Inverse frequencies [head_dim/2] for the short (use_long 0) or long factors; plain RoPE
 * (no rope_scaling) ignores use_long. */
void rope_inv_freq(const phi3_config *c, int use_long, float *inv_freq);
/* cos and sin [head_dim/2] at position pos, already multiplied by c->attn_factor. */
void rope_cos_sin(const phi3_config *c, const float *inv_freq, int pos, float *cos_, float *sin_);
/* Rotate-half in place: x[i] pairs with x[i + hd/2]. */
void rope_apply(float *x, const float *cos_, const float *sin_, int head_dim);
/* Long factors for a sequence of n positions? (longrope and n > original_max) */
int rope_use_long(const phi3_config *c, long n);

#endif
