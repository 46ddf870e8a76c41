/* tokenizer.h: the Hugging Face tokenizer.json BPE tokenizer (Phi-3 / Llama-2 family):
 * load from a model directory, encode text to ids, decode ids to UTF-8 (one-shot or
 * streamed a token at a time, never splitting a character). */
#ifndef PHI3_TOKENIZER_H
#define PHI3_TOKENIZER_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tok tok;

/* Growable arrays the encoder and decoder append to (free with tok_ids_free/tok_buf_free). */
typedef struct tok_ids {
    int32_t *v; size_t n, cap;
    /* Optional: when set, tok_encode hands the ids found so far to flush (between BPE
     * chunks, once there are TOK_FLUSH_IDS or more: a long text never holds all its ids)
     * and then empties the array. Ids after a flush always follow (the last chunk's). */
    void (*flush)(struct tok_ids *ids, void *ctx);
    void *ctx;
} tok_ids;
#define TOK_FLUSH_IDS 65536
typedef struct tok_buf { char *p; size_t n, cap; } tok_buf;
void tok_ids_free(tok_ids *a);
void tok_buf_free(tok_buf *b);

/* Load DIR/tokenizer.json (+ DIR/tokenizer_config.json when present). NULL on failure
 * with a one-line reason in err (no program prefix). */
tok *tok_load(const char *dir, char *err, size_t errlen);
/* The same from memory (config may be NULL): what the fuzz target drives. */
tok *tok_load_mem(const char *json, size_t len, const char *config, size_t config_len,
                  char *err, size_t errlen);
/* The same with model.vocab and model.merges given as arrays instead of in json (whose
 * model's vocab and merges, if any, are not read): piece i (n_pieces of them, non-empty,
 * UTF-8, no NUL) is vocab id id[i] (< TOK_MAX_ID); merge r joins pieces merge[r][0] and
 * merge[r][1] (indexes into piece), as json's merge r would. A GGUF vocabulary of 32k
 * pieces and 61k merges takes this path (tok_gguf.c) instead of a JSON text of them:
 * validated the same way, a third of the time. what names the pieces in errors. */
typedef struct tok_parts {
    size_t n_pieces, n_merges;
    const char *const *piece;
    const size_t *len;
    const int32_t *id;
    const int32_t (*merge)[2];
    const char *what;
} tok_parts;
tok *tok_load_parts(const char *json, size_t len, const char *config, size_t config_len, const tok_parts *parts,
                    char *err, size_t errlen);
void tok_free(tok *t);
/* For the tools: the model directory of -m DIR (opt) or $PHI3_MODEL, else a usage error
 * (exit 2); its tokenizer, else phi3_die with the reason (exit 1). *dir gets the directory. */
tok *tok_load_cli(const char *opt, const char **dir);
/* For the tools: a JSON object file of at most max bytes read through read_file (a FIFO
 * or other non-regular file is refused, never waited on; a larger one before it is
 * parsed: its jansson tree costs 20-45x the text); phi3_die with the reason on any
 * error, except a missing file when optional (NULL). */
struct json_t *tok_json_file(const char *path, bool optional, size_t max);

/* Ids run 0 .. tok_n_vocab()-1 (model vocab and added tokens; 32011 for Phi-3). */
int tok_n_vocab(const tok *t);
/* The raw piece of an id ("▁Hello", "<0x0A>", "<|end|>"); NULL if id is not in the
 * vocabulary. *len may be NULL. */
const char *tok_piece(const tok *t, int32_t id, size_t *len);
/* Id of an exact piece / added-token string, or -1. */
int32_t tok_find(const tok *t, const char *s, size_t len);
/* True for added tokens flagged special (control tokens: skipped by TOK_SKIP_SPECIAL). */
bool tok_is_special(const tok *t, int32_t id);
/* True for every added token (special or not: "</s>" in Phi-3). */
bool tok_is_added(const tok *t, int32_t id);
/* From tokenizer_config.json: eos_token / bos_token strings (NULL if absent) and whether
 * encoding a whole text adds BOS (add_bos_token; false for the June-2024 Phi-3 files). */
const char *tok_eos_token(const tok *t);
const char *tok_bos_token(const tok *t);
bool tok_add_bos(const tok *t);

/* -1 if s[0..n) is valid UTF-8, else the byte offset where the first invalid sequence
 * starts (overlongs, surrogates, > U+10FFFF and truncated sequences are invalid). */
long tok_utf8_check(const char *s, size_t n);

/* Encoding. TOK_SPECIAL: strings of special added tokens ("<|end|>") become those
 * tokens; without it they are plain text (transformers' split_special_tokens=True).
 * Non-special added tokens ("</s>" in Phi-3) are always matched, as transformers does. */
enum { TOK_SPECIAL = 1 };

/* State carried from one text to the next when a prompt arrives in pieces (the text
 * frames of phi3-template): an added token with rstrip at the very end of one piece
 * also swallows the whitespace that starts the next, exactly as on the joined text. */
typedef struct tok_enc_state { bool skip_ws; } tok_enc_state;

/* Append the ids of s[0..n) to out. st may be NULL (a text on its own). Never adds BOS:
 * a caller that starts a prompt checks tok_add_bos(). Returns 0, or -1 if s is not
 * valid UTF-8 (*bad_off = tok_utf8_check's offset; nothing appended). */
int tok_encode(const tok *t, const char *s, size_t n, unsigned flags, tok_enc_state *st,
               tok_ids *out, long *bad_off);

/* Decoding. TOK_SKIP_SPECIAL drops special added tokens (skip_special_tokens=True).
 * TOK_LENIENT_BYTES: the older byte rule (see tok_dec) instead of Hugging Face's. */
enum { TOK_SKIP_SPECIAL = 1, TOK_LENIENT_BYTES = 2 };

/* Streaming decoder: push ids one at a time; each push appends exactly the text that is
 * final so far, never half a character. Byte-fallback tokens follow Hugging Face's
 * ByteFallback decoder: a run of consecutive byte tokens (skipped special tokens do not
 * break it) is decoded as a whole; if its bytes are valid UTF-8 they are the text, else
 * EVERY byte of the run becomes U+FFFD ("<0x31><0xFE>" -> two U+FFFD). So a run is held
 * back until a non-byte token or the end of the sequence, or until it can no longer be
 * valid UTF-8 (then its U+FFFDs, and one per later byte of the run, come out at once).
 * With TOK_LENIENT_BYTES only the bytes that cannot form a character become U+FFFD
 * ("1" + U+FFFD), characters being released as soon as they are whole. The decoder's
 * leading-space strip applies to the start of a sequence only. Concatenating all pushes
 * + tok_dec_end == tok_decode of the ids. */
typedef struct tok_dec {
    const tok *t;
    unsigned flags;
    int strip_left;           /* leading strip characters still to remove */
    int npend, need;          /* lenient: bytes of an incomplete character held back */
    unsigned char pend[4];
    tok_buf run;              /* HF rule: the byte run held back */
    size_t run_ok;            /* bytes of run that form whole valid characters */
    bool run_bad;             /* the run is already known invalid: U+FFFD per byte */
} tok_dec;

void tok_dec_init(tok_dec *d, const tok *t, unsigned flags);
/* 0, or -1 if id is outside the vocabulary (nothing appended, state unchanged). */
int tok_dec_push(tok_dec *d, int32_t id, tok_buf *out);
/* End of a sequence: release held bytes (as U+FFFD unless they are whole characters) and
 * start a new sequence, so the next id gets the leading-space strip again. Also frees
 * the decoder's own storage (a decoder needs no other cleanup). */
void tok_dec_end(tok_dec *d, tok_buf *out);

/* One-shot decode into out. 0, or -1 with *bad_index set if an id is outside the vocab. */
int tok_decode(const tok *t, const int32_t *ids, size_t n, unsigned flags, tok_buf *out,
               size_t *bad_index);

#endif
