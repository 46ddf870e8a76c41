/* llama_logits.c: the logits llama.cpp computes for a list of token ids, for
 * tests/interop/llamacpp.sh (built there against a llama.cpp tree the user names; never
 * part of phi3's build). One batch, every position's logits, float32 KV cache (llama.cpp
 * defaults to f16, which alone moves logits by ~1e-3), 2 threads.
 *
 * usage: llama_logits MODEL.gguf N_CTX ID... > logits.f32   (n_ids x n_vocab float32) */
#include "llama.h"
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: llama_logits MODEL.gguf N_CTX ID...\n");
        return 2;
    }
    int n = argc - 3;
    llama_backend_init();
    struct llama_model *m = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!m) {
        fprintf(stderr, "llama_logits: cannot load %s\n", argv[1]);
        return 1;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (unsigned)atoi(argv[2]);
    cp.n_batch = cp.n_ubatch = (unsigned)n;
    cp.n_threads = cp.n_threads_batch = 2;
    cp.type_k = cp.type_v = GGML_TYPE_F32;
    struct llama_context *c = llama_init_from_model(m, cp);
    if (!c) {
        fprintf(stderr, "llama_logits: cannot make a context of %s tokens\n", argv[2]);
        return 1;
    }
    struct llama_batch b = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        b.token[i] = atoi(argv[3 + i]);
        b.pos[i] = i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = 1;
    }
    b.n_tokens = n;
    if (llama_decode(c, b)) {
        fprintf(stderr, "llama_logits: llama_decode failed\n");
        return 1;
    }
    int nv = llama_vocab_n_tokens(llama_model_get_vocab(m));
    for (int i = 0; i < n; i++) fwrite(llama_get_logits_ith(c, i), sizeof(float), (size_t)nv, stdout);
    llama_batch_free(b);
    llama_free(c);
    llama_model_free(m);
    return 0;
}
