/* session.h: phi3-run's context (token ids + KV cache) kept in a POSIX shared-memory
 * object so that a later phi3-run reuses the longest matching prefix (docs/SESSIONS.md).
 * A session is a pure cache: the logits with and without it are bit-identical on the
 * CPU backend, whose KV cache lives in the shared memory itself. */
#ifndef PHI3_SESSION_H
#define PHI3_SESSION_H
#include "decode/backend.h"
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct phi3_model;

#define SESSION_VERSION 2                /* 2: rows of K rotated + V (1 also held K raw) */
#define SESSION_HDR_BYTES 4096          /* header page; token ids follow, then the KV rows */
#define SESSION_PREFIX "phi3."          /* NAME is the object "/phi3.NAME" (/dev/shm/phi3.NAME) */
#define SESSION_NAME_MAX 200

/* What an object must look like to be used with a model (shapes from its config). */
typedef struct session_expect {
    uint64_t fingerprint;
    int n_layers, n_kv_heads, head_dim, vocab, max_pos, orig_max;
} session_expect;

void session_expect_model(const struct phi3_model *m, session_expect *e);

/* A validated snapshot of an object's header. */
typedef struct session_state {
    uint64_t fingerprint;
    int n_layers, n_kv_heads, head_dim, vocab, max_pos, orig_max;
    size_t pos_floats;                  /* elements per position (backend.h row layout) */
    kv_type kv_type;                    /* element type of the rows */
    size_t ids_off, kv_off;             /* byte offsets of the id array and the KV rows */
    int capacity;                       /* positions the object has room for */
    int count;                          /* committed tokens */
    int rope_long;                      /* rows computed with the long LongRoPE factors */
    uint32_t ids_crc;
    int kernel;                         /* the kernel path that computed the rows */
    int writer_pid;                     /* last process that took the writer lock */
} session_state;

/* Validate the untrusted bytes of an object (buf, size = the object's size): magic,
 * layout version, header checksum, offsets and capacity inside size, the committed
 * count, token ids in range and their checksum (check_ids), and, with exp, the model
 * fingerprint and shapes. Never reads outside buf. 0 ok with *st filled; -1 with the
 * cause in err. This is the fuzzed entry point. */
int session_validate(const void *buf, size_t size, const session_expect *exp, int check_ids,
                     session_state *st, char *err, size_t errlen);
/* The same on the first avail bytes of an object of size bytes (a reader's private copy
 * of the header and ids): never reads buf past avail; ids not all within avail are an
 * error when check_ids. */
int session_validate_part(const void *buf, size_t avail, size_t size, const session_expect *exp,
                          int check_ids, session_state *st, char *err, size_t errlen);

/* NAME: 1..SESSION_NAME_MAX of [A-Za-z0-9._-], not starting with '.', no "..". 0 ok. */
int session_name_check(const char *name, char *err, size_t errlen);

typedef struct session session;

/* Open NAME for writing, creating it (mode 0600) if absent: take the writer lock
 * (waiting, or failing at once with nowait), check owner, mode and contents. max_ctx
 * (<= max_pos) bounds growth. NULL with one line in err; a bad object is left as is. */
session *session_open(const char *name, const struct phi3_model *m, int max_ctx, int nowait,
                      char *err, size_t errlen);
/* The same with a KV element type: kv (a kv_type) is the type of a new object and must
 * match an existing one's (else an error naming both); kv < 0 takes an existing object's
 * type (f32 for a new one). session_kv(s).type tells which. */
session *session_open_kv(const char *name, const struct phi3_model *m, int max_ctx, int nowait, int kv,
                         char *err, size_t errlen);
/* End of the run: a run that is still a prefix of the stored context (and got at least
 * one token) truncates it to what it saw; then unmap and release the lock. */
void session_close(session *s);

int session_count(const session *s);
const int32_t *session_ids(const session *s);
int session_rope_long(const session *s);
kv_store session_kv(const session *s);
/* Room for need positions (grows the object: fallocate, then remap). 0 ok; -1 + err. */
int session_reserve(session *s, int need, char *err, size_t errlen);

/* Attach the backend the run computes with. CPU: b was made with session_kv() as its
 * store; this installs the grow hook. Device backends: rows go through kv_load/kv_save.
 * threads: for a private CPU backend that computes short frames over a stored long
 * context (see docs/SESSIONS.md); < 0 never uses one. */
void session_attach(session *s, backend *b, int threads);

/* What a run did, for --stats (also kept without a session: s NULL in session_forward). */
typedef struct session_stats {
    long reused, computed;              /* positions taken from the session / computed */
    double prefill_s, decode_s;         /* time in forwards of frames of > 1 / 1 tokens */
    long prefill_frames, decode_tokens;
    double prefill_last_s;              /* the last frame of > 1 tokens: its time and size */
    long prefill_last_n;
} session_stats;

/* The run's forward for one tokens frame (ids[0..n) after the context so far): with a
 * session, reuse what the stored context holds for these positions, compute the rest,
 * then record them. s NULL: a plain b->ops->forward, timed into st. 0 ok; -1 with err. */
int session_forward(session *s, backend *b, const int32_t *ids, int n, float *logits, int all,
                     session_stats *st, char *err, size_t errlen);

/* The run's context length (with a session the backend may hold another state between
 * frames). */
int session_ctx_len(const session *s, const backend *b);
/* Rewind the run's context to pos (<= its length): a tokens frame with an earlier pos.
 * The stored context is kept; the next frame reuses what still matches. */
int session_rewind(session *s, int pos, char *err, size_t errlen);

/* "phi3-run: stats: reused N, computed N, prefill X s (N frames), decode X s (N tokens, R tok/s)",
 * then (after any frame of > 1 tokens) "; last prefill frame N tokens in X s" */
void session_stats_print(const session_stats *st);

/* Management (no model needed). 0 ok; -1 with err. */
int session_remove(const char *name, int nowait, char *err, size_t errlen);
int session_list(FILE *out, char *err, size_t errlen);        /* one line per object */
int session_info(const char *name, FILE *out, char *err, size_t errlen);   /* one JSON object */

#endif
