/* cpu.h: extras of the CPU backend beyond decode/backend.h (debugging and tests). */
#ifndef PHI3_CPU_H
#define PHI3_CPU_H
#include "decode/backend.h"

/* Hidden-state observer: called during forward with the residual stream of n positions
 * starting at pos0 ([n, hidden] floats). stage 0: embeddings; 1 + l: after layer l;
 * n_layers + 1: after the final norm. (transformers' hidden_states[k] is stage k for
 * k < n_layers and stage n_layers + 1 for the last one.) */
typedef void (*cpu_hidden_fn)(void *ctx, int stage, int pos0, int n, const float *x);
void backend_cpu_set_hidden_hook(backend *b, cpu_hidden_fn fn, void *ctx);

/* Bytes of KV storage the backend allocated itself (0 with external kv). */
size_t backend_cpu_kv_bytes(const backend *b);

/* Which dot-product kernels compute, as a session records it. Since every path follows
 * the canonical order of decode/gemm.h (AVX-512, AVX2 and the portable C give the same
 * bits), this is one value; a session records it so a future path that differs can say so. */
int backend_cpu_kernel(void);

#endif
