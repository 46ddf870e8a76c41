/* fast.cuh: the opt-in kernels of the CUDA backend (PHI3_CUDA_FAST=1, docs/GPU.md).
 * COMPILED, NOT YET RUN ON A GPU: tests/gpu/check.sh checks them (fixtures, CUDA vs CPU,
 * sanitizer, two runs identical, full-size decode) the first time a GPU is lent; until
 * then the default path (kernels.cuh) is the verified one.
 *
 * Decode (one token): matrix-vector products of bf16 weights with float32 activations
 * (no hi + lo split), RMSNorm recomputed inside the product's input stage, SwiGLU and the
 * residual add in its epilogue; RoPE + KV write in one kernel; split-KV attention with a
 * fixed split count (so the step can be captured as a CUDA graph) and the position read
 * from device memory. No float atomics: every reduction has a fixed order. */
#ifndef PHI3_FAST_CUH
#define PHI3_FAST_CUH
#include "kernels/kernels.cuh"

/* fp16 conversion of a KV-cache value that keeps NaN (kv_cvt of kernels.cuh saturates
 * NaN to -65504: issue 10 item 5); finite values beyond fp16's range saturate. */
static __device__ __forceinline__ kvt kv_cvt_nan(float f)
{
    return f != f ? __float2half_rn(f) : __float2half_rn(fminf(fmaxf(f, -65504.f), 65504.f));
}

/* pdl (the last argument of the decode launchers): launch with programmatic dependent
 * launch (sm_90; PHI3_CUDA_FAST=2): the kernel may start while the previous one finishes,
 * and the matrix-vector product moves its weight rows towards L2 before it waits for the
 * previous kernel's results. Every kernel here waits (griddepcontrol.wait) before it reads
 * anything a previous kernel wrote, so with pdl = 0 they behave as plain launches. */

/* Epilogues of fk_gemv. */
enum { FK_STORE = 0, FK_ADD = 1, FK_SWIGLU = 2 };

/* y = epi(W . in), W [N][K] bf16 row-major (K % 8 == 0, rows 16-byte aligned), x [K]
 * float32 (16-byte aligned). in = x, or RMSNorm(x) = norm_w * (x / sqrt(mean(x^2) + eps))
 * when norm_w != NULL (each block recomputes the norm: no separate pass).
 *   FK_STORE:  y[r] = dot(W[r], in)                          r < N
 *   FK_ADD:    y[r] += dot(W[r], in)      (residual stream; y must not alias x)
 *   FK_SWIGLU: y[j] = u * silu(g), g = dot(W[j], in), u = dot(W[N/2 + j], in), j < N/2
 *              (the gate | up product; N even)
 * float32 accumulation, warp shuffles in a fixed order. Dynamic shared memory: 4 K bytes
 * (fk_gemv_prepare(K) once for K > 12288). */
cudaError_t fk_gemv(cudaStream_t s, const bf16 *W, int N, int K, const float *x,
                    const float *norm_w, float eps, int epi, float *y, int pdl);
cudaError_t fk_gemv_prepare(int max_k);

/* x[0..hidden) = float(table[*d_id]) (one token; the id read from device memory). */
cudaError_t fk_embed1(cudaStream_t s, const bf16 *table, const int32_t *d_id, int hidden,
                      float *x, int pdl);

/* RoPE + KV write for n tokens at positions p0 .. p0+n-1 where p0 = *d_pos when d_pos !=
 * NULL (a graph-captured decode step), else pos0. qkv [n][(nh + 2 nkv) hd] float32. Q
 * rotated into q_f32 and/or q_h ([n][nh hd], either may be NULL); K rotated and V into the
 * layer's cache rows. Angles exactly as kern_rope_qkv (the CPU backend's). One thread per
 * (token, head, pair). NaN stays NaN in the cache. */
cudaError_t fk_rope_qkv(cudaStream_t s, const float *qkv, int n, const int32_t *d_pos, int pos0,
                        int nh, int nkv, int hd, const float *inv_freq, float attn_factor,
                        float *q_f32, kvt *q_h, kvt *kc, kvt *vc, int pdl);

/* Decode attention of one query at position *d_pos (keys 0 .. *d_pos, or the window), split
 * over nsplit blocks per head (fixed: the grid does not depend on the position), merged by
 * log-sum-exp. 4 lanes per key, 16-byte loads of K and V. q [nh hd] float32, out [nh hd].
 * work: at least nh * nsplit * (hd + 2) floats. */
int fk_decode_splits(int n_sm, int nh);
cudaError_t fk_attn_decode(cudaStream_t s, const float *q, const kvt *kc, const kvt *vc,
                           const int32_t *d_pos, int nh, int nkv, int hd, int window,
                           int nsplit, float *work, size_t work_floats, float *out, int pdl);

/* Prefill attention, FlashAttention-2 scheme on mma.sync m16n8k16 (fp16 in, float32
 * accumulate): S, P and O in registers, K/V tiles double-buffered with cp.async. The
 * interface and semantics of kern_attn_prefill (causal, window, GQA; head_dim 64/96/128;
 * 32 falls back to kern_attn_prefill). */
cudaError_t fk_attn_prefill(cudaStream_t s, const kvt *q, const kvt *kc, const kvt *vc, int n,
                            int pos0, int nh, int nkv, int hd, int window, float *out);

#endif
