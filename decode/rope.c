/* rope.c: rotary embedding tables and the rotate-half rotation (see rope.h). */
#include "decode/rope.h"
#include <math.h>

void rope_inv_freq(const phi3_config *c, int use_long, float *inv_freq)
{
    int half = c->head_dim / 2;
    const float *f = !c->rope_longrope ? NULL : use_long ? c->long_factor : c->short_factor;
    for (int i = 0; i < half; i++) {
        /* float32 throughout, in transformers' order: base ** (2i / dim), times the factor. */
        float e = (float)(2 * i) / (float)c->head_dim;
        float p = powf((float)c->rope_theta, e);
        inv_freq[i] = 1.0f / (f ? f[i] * p : p);
    }
}

void rope_cos_sin(const phi3_config *c, const float *inv_freq, int pos, float *cos_, float *sin_)
{
    float af = (float)c->attn_factor;
    for (int i = 0; i < c->head_dim / 2; i++) {
        float a = inv_freq[i] * (float)pos;
        cos_[i] = (float)cos((double)a) * af;
        sin_[i] = (float)sin((double)a) * af;
    }
}

void rope_apply(float *x, const float *cos_, const float *sin_, int head_dim)
{
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        float a = x[i], b = x[i + half];
        /* q*cos + rotate_half(q)*sin with rotate_half(q) = cat(-q[half:], q[:half]) */
        x[i] = a * cos_[i] - b * sin_[i];
        x[i + half] = b * cos_[i] + a * sin_[i];
    }
}

int rope_use_long(const phi3_config *c, long n)
{
    return c->rope_longrope && n > c->original_max_pos;
}
