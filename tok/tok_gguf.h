/* tok_gguf.h: the tokenizer, stop ids and vocabulary size of a GGUF file, from its
 * tokenizer.ggml.* metadata (llama.cpp's "llama" = SentencePiece BPE vocabulary), built
 * to give the ids the model's tokenizer.json gives. */
#ifndef PHI3_TOK_GGUF_H
#define PHI3_TOK_GGUF_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "embed/gguf.h"
#include "tok/tokenizer.h"

/* llama.cpp's token types (tokenizer.ggml.token_type). */
enum { TOKT_NORMAL = 1, TOKT_UNKNOWN = 2, TOKT_CONTROL = 3, TOKT_USER = 4, TOKT_UNUSED = 5, TOKT_BYTE = 6 };

/* Open PATH and build its tokenizer. NULL with "PATH: cause" in err. */
tok *tok_load_gguf(const char *path, char *err, size_t errlen);
/* The same on a parsed file (what the tests and the fuzz target drive). */
tok *tok_from_gguf(const gguf_file *g, char *err, size_t errlen);

/* The merges of a SentencePiece vocabulary, as Hugging Face's converter lists them:
 * every split of a normal piece into two normal pieces, pieces in descending score
 * (ties in id order), the splits of one piece ordered by (left id, right id). The
 * merge priority of llama.cpp's SPM tokenizer is this same order. *out: malloc'ed
 * pairs {left, right}; returns the count, or -1 (err) on a duplicate normal piece. */
long tok_spm_merges(size_t n, const char *const *piece, const size_t *len, const float *score,
                    const int32_t *type, int32_t (**out)[2], char *err, size_t errlen);

/* Stop ids of a GGUF model: eos, eot and eom ids when present, and every control or
 * user-defined token whose text llama.cpp treats as an end of generation ("<|end|>",
 * "<|endoftext|>", ...). 0 ok; -1 err. */
int tok_gguf_stop_ids(const char *path, int32_t **ids, size_t *n, char *err, size_t errlen);
/* The model's vocabulary size: rows of token_embd.weight, else the number of tokens. */
int tok_gguf_model_vocab(const char *path, int *n, char *err, size_t errlen);
/* 1 + the largest id the tokenizer knows (unused padding tokens excluded). */
int tok_gguf_n_ids(const char *path, int32_t *n, char *err, size_t errlen);

#endif
