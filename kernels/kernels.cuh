/* kernels.cuh: the CUDA kernels of phi3-run, one .cu per op family, each reached through a
 * launcher that checks its arguments, launches on the given stream and returns the launch
 * error (cudaSuccess when fine). All buffers are device memory; matrices are row-major.
 * bf16 in storage, float32 arithmetic. */
#ifndef PHI3_KERNELS_CUH
#define PHI3_KERNELS_CUH
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

/* The attention operands (KV cache, the rotated Q of the flash kernel, its probabilities)
 * are fp16, not bf16: the same bytes and the same tensor-core rate, 8x finer rounding
 * (10 mantissa bits against 7). With bf16 there, logits of the tiny fixtures were 1-2% off
 * in relative L2 and greedy near-ties flipped; fp16 is also what llama.cpp caches by
 * default. Values beyond fp16's range saturate instead of becoming inf. */
typedef __half kvt;
static __device__ __forceinline__ kvt kv_cvt(float f)
{
    return __float2half_rn(fminf(fmaxf(f, -65504.f), 65504.f));
}
static __device__ __forceinline__ float kv_f(kvt h) { return __half2float(h); }

/* Split-KV attention, the merge of one head's nsplit parts: part s at w + s (D + 2) holds
 * its max logit M_s (-inf: no keys), its sum of exponentials L_s and its D unnormalised
 * outputs. The threads of the block stride over d; out: the head's D outputs. The query's
 * own key is in some part, so L > 0. (attn_decode.cu's merge and the fast path's.) */
static __device__ __forceinline__ void attn_merge_parts(const float *w, int nsplit, int D, float *out)
{
    float M = -INFINITY;
    for (int s = 0; s < nsplit; s++)
        M = fmaxf(M, w[(size_t)s * (D + 2)]);
    float L = 0.f;
    for (int s = 0; s < nsplit; s++) {
        const float ms = w[(size_t)s * (D + 2)];
        if (ms != -INFINITY)
            L += w[(size_t)s * (D + 2) + 1] * expf(ms - M);
    }
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float o = 0.f;
        for (int s = 0; s < nsplit; s++) {
            const float ms = w[(size_t)s * (D + 2)];
            if (ms != -INFINITY)
                o += w[(size_t)s * (D + 2) + 2 + d] * expf(ms - M);
        }
        out[d] = o / L;
    }
}

/* A float32 array entering a bf16 matrix product may be split in two bf16 arrays,
 * x = hi + lo (about 16 significant bits): the product then takes both as extra columns
 * of the same GEMM (weights still read once) and its consumer adds the two halves.
 * lo == NULL everywhere means "hi only". */

/* embed.cu: x[t] = float(table[ids[t]]), table [vocab][hidden]. ids must be < vocab. */
cudaError_t kern_embed(cudaStream_t s, const bf16 *table, const int32_t *ids, int n,
                       int hidden, float *x);

/* rmsnorm.cu: out[t] = w * x[t] / sqrt(mean(x[t]^2) + eps) in float32, rounded to bf16 hi
 * (+ lo when lo != NULL). x [rows][hidden], w [hidden] float32. */
cudaError_t kern_rmsnorm(cudaStream_t s, const float *x, const float *w, int rows, int hidden,
                         float eps, bf16 *hi, bf16 *lo);

/* rope.cu. Angles: a = float(inv_freq[i] * pos), cos/sin computed in double from that
 * float and multiplied by attn_factor (the CPU backend's rope_cos_sin). Rotate-half layout.
 *
 * kern_rope_qkv: qkv [n][(nh + 2 nkv) hd] float32 (+ qkv_lo, same shape, or NULL) for the
 * positions pos0 .. pos0+n-1. Rotates Q into q_f32 and/or q_h (fp16) ([n][nh hd], either may
 * be NULL), rotates K and writes it with V into the layer's cache (kc, vc: [pos][nkv hd]
 * fp16) at rows pos0 .. pos0+n-1. */
cudaError_t kern_rope_qkv(cudaStream_t s, const float *qkv, const float *qkv_lo, int n,
                          int pos0, int nh, int nkv, int hd, const float *inv_freq,
                          float attn_factor, float *q_f32, kvt *q_h, kvt *kc, kvt *vc);
/* Export cache rows [pos0, pos0+n) of one layer to float32 in the CPU backend's row layout:
 * out[t] = [K rotated (kvdim)][V (kvdim)] (inv_freq and attn_factor are no longer used:
 * session layout 2 dropped the K before RoPE that the inverse rotation recovered). */
cudaError_t kern_kv_export(cudaStream_t s, const kvt *kc, const kvt *vc, int pos0, int n,
                           int nkv, int hd, const float *inv_freq, float attn_factor,
                           float *out);
/* Import: in[t] = [K rotated][V] float32 -> cache rows pos0+t. */
cudaError_t kern_kv_import(cudaStream_t s, const float *in, int pos0, int n, int kvdim,
                           kvt *kc, kvt *vc);

/* swiglu.cu: gu [n][2 inter] (gate | up) float32 (+ gu_lo or NULL) ->
 * out[t][j] = up * silu(gate), bf16 hi [n][inter] (+ lo [n][inter] when lo != NULL). */
cudaError_t kern_swiglu(cudaStream_t s, const float *gu, const float *gu_lo, int n, int inter,
                        bf16 *hi, bf16 *lo);

/* residual.cu: x += a (+ b when b != NULL), n floats. */
cudaError_t kern_residual_add(cudaStream_t s, float *x, const float *a, const float *b,
                              size_t n);
/* out = a + b (out may be a). */
cudaError_t kern_add(cudaStream_t s, float *out, const float *a, const float *b, size_t n);
/* hi = bf16(x), lo = bf16(x - hi) when lo != NULL. */
cudaError_t kern_split_bf16(cudaStream_t s, const float *x, bf16 *hi, bf16 *lo, size_t n);

/* Attention. Query t (absolute position pos0 + t) of head h attends the keys of kv head
 * h / (nh / nkv) at positions max(0, pos0+t-window+1) .. pos0+t (window <= 0: from 0),
 * scale 1/sqrt(hd). kc, vc: the layer's cache [pos][nkv hd] fp16, rows written up to
 * pos0+n-1. out [n][nh hd] float32. head_dim 32, 64, 96 or 128. */
int kern_attn_head_dim_ok(int hd);

/* attn_prefill.cu: flash attention (tensor cores, fp16 in, float32 accumulate, online
 * softmax in 64x64 tiles; the score matrix never leaves shared memory). q [n][nh hd] fp16. */
cudaError_t kern_attn_prefill(cudaStream_t s, const kvt *q, const kvt *kc, const kvt *vc,
                              int n, int pos0, int nh, int nkv, int hd, int window, float *out);

/* attn_decode.cu: split-KV attention (each query's keys split across blocks, partial
 * results merged by log-sum-exp). q [n][nh hd] float32. work: scratch of work_floats
 * floats, at least n * nh * (hd + 2); more lets more blocks share one query. n_sm: the
 * device's multiprocessor count (to size the split). */
cudaError_t kern_attn_decode(cudaStream_t s, const float *q, const kvt *kc, const kvt *vc,
                             int n, int pos0, int nh, int nkv, int hd, int window,
                             float *work, size_t work_floats, int n_sm, float *out);

#endif
