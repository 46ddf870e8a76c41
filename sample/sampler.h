/* sampler.h: picks the next token from a logits vector with a fixed, documented chain of
 * strategies (docs/SAMPLING.md), reproducibly for a given seed on any IEEE-754 machine. */
#ifndef PHI3_SAMPLER_H
#define PHI3_SAMPLER_H
#include <stddef.h>
#include <stdint.h>

/* The chain, in this order (same order as llama.cpp's default sampler chain):
 *   logit-bias -> penalties (repeat, presence, frequency over the last repeat_last_n
 *   context ids) -> top-k -> typical-p -> top-p -> min-p -> temperature -> draw.
 * top-k/typical/top-p/min-p work on probabilities at temperature 1 (renormalised over
 * the candidates that survived the previous steps). greedy or temperature 0: argmax of
 * the biased and penalised logits (lowest id on a tie), the filters being irrelevant. */
typedef struct sample_params {
    int greedy;
    double temperature;      /* >= 0; 0 means greedy */
    int top_k;               /* 0: off */
    double typical_p;        /* (0,1]; 1: off */
    double top_p;            /* (0,1]; 1: off */
    double min_p;            /* [0,1]; 0: off */
    double repeat_penalty;   /* > 0; 1: off (llama.cpp: l>0 ? l/r : l*r) */
    double presence_penalty; /* subtracted once from ids present in the window */
    double frequency_penalty;/* subtracted count times */
    int repeat_last_n;       /* window of context ids; 0: no penalties; -1: whole context */
    const int32_t *bias_ids; /* --logit-bias ID=V, applied first (V may be -inf: ban) */
    const double *bias_vals;
    size_t n_bias;
    uint64_t seed;
    int32_t id_limit;        /* > 0: ids >= id_limit are never picked (padding rows the
                                tokenizer cannot decode); 0: no limit */
} sample_params;

/* Defaults: temperature 1, every filter and penalty off, repeat_last_n 64, seed 0. */
void sample_params_default(sample_params *p);
/* NULL if the parameters are valid, else a static message naming the bad one. */
const char *sample_params_check(const sample_params *p);

/* A chain option by its long name (temperature, top-k, top-p, min-p, typical-p,
 * repeat-penalty, presence-penalty, frequency-penalty, repeat-last-n, logit-bias, seed;
 * greedy takes no value) into p. --logit-bias appends to p's bias arrays, which are then
 * malloc'ed and freed by sample_params_free. 0 ok; -1 with "--NAME: why" in err; 1 if
 * NAME is not a chain option. Ranges between options are sample_params_check's. */
int sample_set_option(sample_params *p, const char *name, const char *value, char *err,
                      size_t errlen);
void sample_params_free(sample_params *p);
/* Whole-string numbers for option NAME: "is not a number" / "is out of range" (over- or
 * underflow; an integer outside int32) in err. 0 ok, -1 bad. */
int sample_parse_double(const char *name, const char *s, double *out, char *err, size_t errlen);
int sample_parse_long(const char *name, const char *s, long *out, char *err, size_t errlen);

typedef struct sampler sampler;

/* n_vocab > 0. The parameters (bias arrays included) are copied. */
sampler *sample_new(const sample_params *p, int n_vocab);
void sample_free(sampler *s);

/* Context ids (prompt and generated) as the model consumed them, for the penalties.
 * Ids outside [0, n_vocab) count as context but cannot be penalised. */
void sample_accept(sampler *s, const int32_t *ids, size_t n);
/* Forget context from position n on (n <= current length), e.g. on a rewind. */
void sample_truncate(sampler *s, size_t n);
size_t sample_context_len(const sampler *s);

/* Logits after bias and penalties (the first two links of the chain) into out. */
void sample_prepare(sampler *s, const float *logits, float *out);
/* Next id from n_vocab logits that are numbers (no NaN; +-inf allowed): -inf is a ban,
 * +inf a certainty (the draw is among the +inf ids only). -1 if every id is banned. */
int32_t sample_next(sampler *s, const float *logits);

/* The candidate set that the filters (top-k, typical, top-p, min-p) keep for these
 * logits, for tests: writes the kept ids in ascending order into ids (n_vocab room) and
 * returns how many. Uses the same code path as sample_next. */
size_t sample_kept(sampler *s, const float *logits, int32_t *ids);

/* The seeded generator: xoshiro256** seeded through splitmix64. */
typedef struct sample_rng { uint64_t s[4]; } sample_rng;
void sample_rng_seed(sample_rng *r, uint64_t seed);
uint64_t sample_rng_next(sample_rng *r);
double sample_rng_uniform(sample_rng *r);      /* [0, 1), 53 random bits */

/* exp and log computed with our own range reduction and polynomials in double, so the
 * draw depends only on IEEE-754 arithmetic, not on the machine's libm. */
double sample_exp(double x);
double sample_log(double x);                   /* x > 0 finite */

/* Stop ids. "32000,32001,32007" -> ids (malloc'ed); -1 with a message in err if the
 * list does not parse (empty items, junk, negative, > INT32_MAX). */
int sample_parse_ids(const char *list, int32_t **ids, size_t *n, char *err, size_t errlen);
/* eos_token_id (int or list of ints) of DIR/generation_config.json, appended to *ids.
 * 0 ok (also when the file does not exist: *found = 0), -1 bad file (message in err). */
int sample_model_stop_ids(const char *dir, int32_t **ids, size_t *n, int *found,
                          char *err, size_t errlen);

/* The same from the text of a generation_config.json (path only names it in err);
 * appends to *ids (on error some may have been appended: the caller frees *ids). */
int sample_stop_ids_json(const char *text, size_t len, const char *path, int32_t **ids,
                         size_t *n, char *err, size_t errlen);

/* Number of ids DIR/tokenizer.json can decode: 1 + the largest id of model.vocab and
 * added_tokens (Phi-3: 32011, while the embedding has 32064 rows). 0 ok, -1 (err). */
int sample_model_tokenizer_ids(const char *dir, int32_t *n, char *err, size_t errlen);

#endif
