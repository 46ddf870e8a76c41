/* fa2_prefill.cu: opt-in prefill attention (fast.cuh). */
#include "kernels/fast.cuh"

cudaError_t fk_attn_prefill(cudaStream_t s, const kvt *q, const kvt *kc, const kvt *vc, int n,
                            int pos0, int nh, int nkv, int hd, int window, float *out)
{
    return kern_attn_prefill(s, q, kc, vc, n, pos0, nh, nkv, hd, window, out);
}
