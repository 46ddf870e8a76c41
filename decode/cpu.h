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

/* Which dot-product kernels compute (1 AVX2/FMA, 2 portable C, PHI3_NO_AVX=1): rows of
 * different kernels may differ in the last bits, so a session records it. */
int backend_cpu_kernel(void);

#endif
