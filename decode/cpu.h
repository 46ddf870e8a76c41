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

/* One forward over k contexts of the same model (phi3-run --serve): context i appends
 * n[i] tokens (1..64) ids[i]; logits[i] NULL, or where its logits go (of the last token,
 * or of every token if all[i]). The weights are read once per step for all; each context
 * gets exactly the bits its own forward would give. *ws: a workspace, NULL at first
 * (free it with backend_cpu_batch_free). 0 ok; -1 with the message in the err of the
 * backend at fault (bs[0] for out of memory). */
typedef struct cpu_batch cpu_batch;
int backend_cpu_forward_batch(cpu_batch **ws, backend **bs, const int32_t **ids, const int *n, float **logits,
                              const int *all, int k);
void backend_cpu_batch_free(cpu_batch *w);

/* Let b run its parallel loops on the threads of from (same thread count; from must
 * outlive b): one set of threads for many contexts that never compute at the same time
 * (the server's streams). 0 ok; -1 (nothing changed) if the counts differ. */
int backend_cpu_share_pool(backend *b, const backend *from);

/* Which dot-product kernels compute, as a session records it. Since every path follows
 * the canonical order of decode/gemm.h (AVX-512, AVX2 and the portable C give the same
 * bits), this is one value; a session records it so a future path that differs can say so. */
int backend_cpu_kernel(void);
/* 1 if b is a CPU backend whose decode products of Q4_K weights go through qlimb.h (opt-in,
 * PHI3_QUANT_LIMBS=1): not the canonical bits, so a session records another path. */
int backend_cpu_limbs(const backend *b);

#endif
