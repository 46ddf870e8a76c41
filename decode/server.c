/* server.c: phi3-run --serve: one process holds the model; every connection on a Unix-
 * domain socket is one stream with the stdin/stdout protocol of phi3-run (tokens in,
 * forwarded tokens and logits out), its own context (KV cache, LongRoPE mode, limit).
 *
 * One thread: poll() over the listening socket, the connections and a self-pipe for
 * signals; non-blocking I/O with a frame reader and an output buffer per connection.
 * Between polls one compute step gives every stream with work one piece: its decode
 * token, or a chunk of its prefill (so a long prompt does not stall the others). A step
 * is one forward per stream, or (CPU, --batch) one forward over all of them with the
 * weights read once (backend_cpu_forward_batch; on CUDA, opt-in PHI3_CUDA_BATCH=1:
 * backend_cuda_forward_batch over backends sharing one copy of the weights). The backends
 * use their own threads.
 *
 * A stream's output is the bytes phi3-run would write for the same input: the same
 * frames, the same error text (sent as an error frame, then the connection closes). */
#include "decode/server.h"
#include "decode/backend.h"
#include "decode/cpu.h"
#include "decode/gemm.h"
#include "decode/qlimb.h"
#include "decode/session.h"
#include "embed/model.h"
#include "shared/stream.h"
#include "shared/util.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define OUT_HIGH (8u << 20)             /* a stream with more output unsent waits */
#define QUEUE_HIGH 64                   /* frames queued before we stop reading a stream */

/* ---- socket path ---- */


int server_socket_path(const char *arg, int mkdir_it, char *out, size_t len, char *err, size_t errlen)
{
    char dir[200];
    int n;
    if (strchr(arg, '/')) {
        n = snprintf(out, len, "%s", arg);
    } else {
        const char *name = *arg ? arg : "default";
        if (!strcmp(name, ".") || !strcmp(name, ".."))
            return phi3_fail(err, errlen, "socket name '%s' is not allowed", name);
        const char *x = getenv("XDG_RUNTIME_DIR");
        if (x && *x == '/') n = snprintf(dir, sizeof dir, "%s/phi3", x);
        else n = snprintf(dir, sizeof dir, "/tmp/phi3-%u", (unsigned)getuid());
        if (n < 0 || (size_t)n >= sizeof dir) return phi3_fail(err, errlen, "socket directory name too long");
        if (mkdir_it && mkdir(dir, 0700) && errno != EEXIST)
            return phi3_fail(err, errlen, "cannot create %s: %s", dir, strerror(errno));
        struct stat sb;
        if (lstat(dir, &sb)) {
            if (errno == ENOENT && !mkdir_it)
                return phi3_fail(err, errlen, "no server at %s/%s (no such directory)", dir, name);
            return phi3_fail(err, errlen, "%s: %s", dir, strerror(errno));
        }
        if (!S_ISDIR(sb.st_mode) || sb.st_uid != getuid() || (sb.st_mode & 077))
            return phi3_fail(err, errlen, "%s is not a private directory of ours (owner uid %u, mode %03o): refusing it",
                          dir, (unsigned)sb.st_uid, (unsigned)(sb.st_mode & 0777));
        n = snprintf(out, len, "%s/%s", dir, name);
    }
    struct sockaddr_un sa;
    if (n < 0 || (size_t)n >= len || (size_t)n >= sizeof sa.sun_path)
        return phi3_fail(err, errlen, "socket path too long (at most %zu bytes)", sizeof sa.sun_path - 1);
    return 0;
}

/* ---- streams ---- */

typedef struct item {                   /* a queued tokens frame, or an error to report */
    long index;                         /* frame number as the client numbers them */
    int64_t *v;                         /* ids as read */
    size_t n;
    int64_t pos;
    int has_pos, partial;
    char *err;                          /* an error item: report this, then close */
} item;

enum { ST_OPEN, ST_CLOSING, ST_DEAD };

typedef struct conn {
    int fd, id;
    int admitted;                       /* counts against --max-streams */
    int state;                          /* ST_CLOSING: last frame queued; close when sent */
    frame_reader *fr;
    int in_eof;                         /* no more frames (EOF, an error queued, the drain) */
    int eof_seen;                       /* the client's input ended cleanly */
    int hello_off;                      /* 1 when the first frame was a hello */
    int setup;                          /* context made (after the first frame) */
    item *q;
    size_t qh, qn, qcap;
    /* the frame in progress */
    int started, empty;
    size_t done;
    int pos0;
    int32_t *ids, last;
    /* the context */
    backend *b;
    session *s;
    session_stats st;
    int all_logits, ctx;
    size_t reserved;                    /* KV budget bytes */
    int32_t *ctx_ids;
    size_t ctx_cap;
    float *lg;
    size_t lg_cap;                      /* positions */
    /* output */
    frame_writer w;                     /* packs frames; appended to out */
    char *out;
    size_t out_len, out_off, out_cap;
    /* stats */
    double t_open;
    long tokens, frames;
} conn;

typedef struct server {
    const server_opts *o;
    phi3_model *m;
    int use_cuda, lfd, sigr, sigw;
    char path[120];
    dev_t dev;
    ino_t ino;
    conn **c;
    int nc, ccap, next_id;
    int admitted;                       /* streams counted against --max-streams */
    size_t reserved;
    int draining;
    /* stats */
    long served, refused, steps, batch_sum, batch_max, tokens;
    double busy_s, t0;
    long hist[6];                       /* steps with 1, 2, 3-4, 5-8, 9-16, >16 streams */
    cpu_batch *batch_ws;                /* backend_cpu_forward_batch workspace */
    backend *pool_owner;                /* CPU: holds the threads every stream's backend uses */
    backend *cuda_owner;                /* CUDA with PHI3_CUDA_BATCH=1 (opt-in): holds the
                                           weights every stream's backend reads */
    long batched_steps;
    long batch_rows_hist[3];            /* batched steps with 2..few, more token rows; total rows */
    int single;                         /* server_serve_fd: one stream, no listening socket */
} server;

static volatile sig_atomic_t got_term, got_usr1;
static int sig_wfd = -1;

static void on_signal(int sig)
{
    int e = errno;
    if (sig == SIGUSR1) got_usr1 = 1;
    else got_term++;
    char c = 0;
    if (write(sig_wfd, &c, 1) < 0) { /* the pipe is full: a wake-up is pending anyway */ }
    errno = e;
}

static void out_append(conn *c, const void *p, size_t n)
{
    if (c->state == ST_DEAD) return;
    if (c->out_off && c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (c->out_len + n > c->out_cap) {
        if (c->out_off) {
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        if (c->out_len + n > c->out_cap) {
            size_t cap = c->out_cap ? c->out_cap : 1 << 18;
            while (cap < c->out_len + n) cap *= 2;
            c->out = xrealloc(c->out, cap);
            c->out_cap = cap;
        }
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
}

static void out_frame(conn *c)           /* the frame packed in c->w */
{
    out_append(c, c->w.buf.data, c->w.buf.size);
    c->w.buf.size = 0;
}

static void send_tokens(conn *c, const int32_t *ids, size_t n, int64_t pos)
{
    fw_begin(&c->w, "tokens", 2);
    fw_ints(&c->w, "ids", ids, n);
    fw_int(&c->w, "pos", pos);
    out_frame(c);
}

static void send_logits(conn *c, int64_t pos, const float *data, size_t n)
{
    fw_begin(&c->w, "logits", 2);
    fw_int(&c->w, "pos", pos);
    fw_bin(&c->w, "data", data, n * sizeof(float));
    out_frame(c);
}

static void item_free(item *it)
{
    free(it->v);
    free(it->err);
    memset(it, 0, sizeof *it);
}

/* Stop computing for c: drop its queue, report msg (an error frame) or, msg NULL, the
 * clean end (a done frame); the connection closes when that has been sent. */
static void conn_finish(conn *c, const char *msg)
{
    if (c->state != ST_OPEN) return;
    for (size_t i = c->qh; i < c->qn; i++) item_free(&c->q[i]);
    c->qh = c->qn = 0;
    c->started = 0;
    if (msg) {
        fw_begin(&c->w, "error", 1);
        fw_str(&c->w, "message", msg, strlen(msg));
    } else {
        fw_begin(&c->w, "done", 0);
    }
    out_frame(c);
    c->state = ST_CLOSING;
    c->in_eof = 1;
}

static void conn_fail(conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void conn_fail(conn *c, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    conn_finish(c, msg);
}

static void stream_stats(const server *sv, const conn *c, const char *what)
{
    double dt = now_sec() - c->t_open;
    phi3_err("stream %d %s: %ld frames, %ld tokens computed in %.3f s (prefill %.3f s, decode %ld tokens %.3f s, "
             "%.1f tok/s), open %.2f s", c->id, what, c->frames, c->st.computed,
             c->st.prefill_s + c->st.decode_s, c->st.prefill_s, c->st.decode_tokens, c->st.decode_s,
             c->st.decode_s > 0 ? c->st.decode_tokens / c->st.decode_s : 0.0, dt);
    (void)sv;
}

static void conn_free(server *sv, conn *c)
{
    if (sv->o->stats) stream_stats(sv, c, "closed");
    for (size_t i = c->qh; i < c->qn; i++) item_free(&c->q[i]);
    free(c->q);
    if (c->b) c->b->ops->destroy(c->b);
    session_close(c->s);
    sv->reserved -= c->reserved;
    sv->admitted -= c->admitted;
    fr_close(c->fr);
    fw_destroy(&c->w);
    close(c->fd);
    free(c->ids);
    free(c->ctx_ids);
    free(c->lg);
    free(c->out);
    free(c);
}

/* The context of a stream, made when its first frame (a hello, or any other) arrives. */
static int conn_setup(server *sv, conn *c)
{
    const phi3_config *cf = &sv->m->cfg;
    char err[512];
    c->setup = 1;
    if (c->ctx > cf->max_pos) {
        conn_fail(c, "--ctx %d exceeds max_position_embeddings %d of the server's model", c->ctx, cf->max_pos);
        return -1;
    }
    int ctx = c->ctx ? c->ctx : sv->o->ctx ? sv->o->ctx : cf->max_pos;
    if (sv->o->kv_budget > 0) {
        size_t need = (size_t)ctx * kv_pos_floats(sv->m) * kv_type_size(sv->o->kv_type == KV_F16 ? KV_F16 : KV_F32);
        if (sv->reserved + need > (size_t)sv->o->kv_budget) {
            sv->refused++;
            conn_fail(c, "server: no room for this stream: its context of %d positions needs %.1f MiB of KV cache, "
                      "%.1f MiB of the budget of %.1f MiB are free (ask less with --ctx, or retry later)",
                      ctx, need / 1048576.0, ((size_t)sv->o->kv_budget - sv->reserved) / 1048576.0,
                      sv->o->kv_budget / 1048576.0);
            return -1;
        }
        c->reserved = need;
        sv->reserved += need;
    }
    kv_store kv;
    if (c->s) kv = session_kv(c->s);   /* opened by the hello */
    if (sv->use_cuda && sv->cuda_owner) c->b = backend_cuda_new_shared(sv->cuda_owner, ctx, err, sizeof err);
    else if (sv->use_cuda) c->b = backend_cuda_new(sv->m, ctx, err, sizeof err);
    else c->b = backend_cpu_new(sv->m, ctx, sv->o->threads, c->s ? &kv : NULL, err, sizeof err);
    if (!c->b) {
        conn_fail(c, "%s backend: %s", sv->use_cuda ? "cuda" : "cpu", err);
        return -1;
    }
    if (!sv->use_cuda && !c->s && sv->o->kv_type == KV_F16 && backend_cpu_set_kv_type(c->b, KV_F16)) {
        conn_fail(c, "%s", c->b->err);
        return -1;
    }
    if (!sv->use_cuda) {
        /* one set of threads for every stream: they compute one after another */
        if (!sv->pool_owner) sv->pool_owner = backend_cpu_new(sv->m, 1, sv->o->threads, NULL, err, sizeof err);
        if (sv->pool_owner) backend_cpu_share_pool(c->b, sv->pool_owner);
    }
    if (c->s) session_attach(c->s, c->b, sv->o->threads);
    return 0;
}

static void queue_push(conn *c, item *it)
{
    if (c->qn == c->qcap) {
        if (c->qh) {
            memmove(c->q, c->q + c->qh, (c->qn - c->qh) * sizeof *c->q);
            c->qn -= c->qh;
            c->qh = 0;
        }
        if (c->qn == c->qcap) {
            c->qcap = c->qcap ? 2 * c->qcap : 16;
            c->q = xrealloc(c->q, c->qcap * sizeof *c->q);
        }
    }
    c->q[c->qn++] = *it;
}

static void queue_error(conn *c, long index, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void queue_error(conn *c, long index, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    item it = {.index = index, .err = xstrdup(msg)};
    queue_push(c, &it);
    c->in_eof = 1;                      /* phi3-run stops reading at its first error */
}

static void on_hello(server *sv, conn *c, const frame *f)
{
    int64_t v;
    bool b;
    const char *s;
    size_t sl;
    int rc = frame_int(f, "version", &v);
    if (rc < 0) { conn_fail(c, "hello: version is not an integer"); return; }
    if (rc > 0 && v != 1) {
        conn_fail(c, "hello: protocol version %lld not supported (this server speaks 1)", (long long)v);
        return;
    }
    if ((rc = frame_bool(f, "all_logits", &b)) < 0) { conn_fail(c, "hello: all_logits is not a boolean"); return; }
    c->all_logits = rc > 0 && b;
    if ((rc = frame_int(f, "ctx", &v)) < 0 || (rc > 0 && (v < 1 || v > (1L << 30)))) {
        conn_fail(c, "hello: ctx is not an integer in [1, %ld]", 1L << 30);
        return;
    }
    c->ctx = rc > 0 ? (int)v : 0;
    if ((rc = frame_str(f, "session", &s, &sl)) < 0) { conn_fail(c, "hello: session is not a string"); return; }
    if (rc > 0) {
        char name[SESSION_NAME_MAX + 2], err[512];
        if (sl > SESSION_NAME_MAX || memchr(s, 0, sl)) { conn_fail(c, "hello: bad session name"); return; }
        memcpy(name, s, sl);
        name[sl] = 0;
        if (sv->use_cuda) { conn_fail(c, "--session with the server's cuda backend is not supported"); return; }
        int ctx = c->ctx ? c->ctx : sv->o->ctx;
        if (ctx > sv->m->cfg.max_pos) ctx = sv->m->cfg.max_pos;
        /* Never wait for another writer: that would stall every stream. */
        c->s = session_open_kv(name, sv->m, ctx, 1, sv->o->kv_type, err, sizeof err);
        if (!c->s) { conn_fail(c, "%s", err); return; }
    }
    conn_setup(sv, c);
}

/* A frame from the client: checked in phi3-run's order; the checks that depend on the
 * context wait until the frame's turn (item_begin). */
static void on_frame(server *sv, conn *c, const frame *f)
{
    long idx = f->index - c->hello_off;
    if (f->index == 1 && !strcmp(f->type, "hello")) {
        c->hello_off = 1;
        on_hello(sv, c, f);
        return;
    }
    if (!c->setup && conn_setup(sv, c)) return;
    if (!strcmp(f->type, "hello")) {
        queue_error(c, idx, "frame %ld: a hello frame must be the first frame of a stream", idx);
        return;
    }
    if (strcmp(f->type, "tokens")) return;   /* end and unknown types: nothing to do */
    item it = {.index = idx};
    size_t bad;
    int rc = frame_ints(f, "ids", &it.v, &it.n, &bad);
    if (rc == 0) { queue_error(c, idx, "frame %ld: tokens frame without ids", idx); return; }
    if (rc < 0) { queue_error(c, idx, "frame %ld: tokens ids[%zu] is not an integer", idx, bad); return; }
    bool partial = false;
    if (frame_bool(f, "partial", &partial) < 0) {
        free(it.v);
        queue_error(c, idx, "frame %ld: tokens partial is not a boolean", idx);
        return;
    }
    it.partial = partial;
    rc = frame_int(f, "pos", &it.pos);
    if (rc < 0) {
        free(it.v);
        queue_error(c, idx, "frame %ld: tokens pos is not an integer", idx);
        return;
    }
    it.has_pos = rc > 0;
    queue_push(c, &it);
}

static void conn_read(server *sv, conn *c)
{
    frame f;
    int rc;
    while (c->state == ST_OPEN && !c->in_eof && c->qn - c->qh < QUEUE_HIGH && (rc = fr_next(c->fr, &f)) != 2) {
        if (rc == 0) { c->in_eof = c->eof_seen = 1; break; }
        if (rc < 0) {
            /* frames before it are answered first, as phi3-run would */
            const char *e = fr_error(c->fr);
            long no;
            int at = 0;
            if (c->hello_off && sscanf(e, "frame %ld: %n", &no, &at) == 1 && at > 0)
                queue_error(c, no - c->hello_off, "frame %ld: %s", no - c->hello_off, e + at);
            else queue_error(c, 0, "%s", e);
            break;
        }
        c->frames++;
        on_frame(sv, c, &f);
        frame_free(&f);
    }
}

/* ---- compute ---- */

typedef struct piece {                  /* one stream's share of a step */
    conn *c;
    const int32_t *ids;
    int n;
    float *lg;                          /* NULL: no logits */
    int all;
} piece;

static float *lg_for(conn *c, size_t positions, int vocab)
{
    if (positions > c->lg_cap) {
        c->lg = xrealloc(c->lg, positions * (size_t)vocab * sizeof(float));
        c->lg_cap = positions;
    }
    return c->lg;
}

static void ctx_note(conn *c, int pos0, const int32_t *ids, size_t n)
{
    if ((size_t)pos0 + n > c->ctx_cap) {
        c->ctx_cap = ((size_t)pos0 + n) * 2;
        c->ctx_ids = xrealloc(c->ctx_ids, c->ctx_cap * sizeof *c->ctx_ids);
    }
    memcpy(c->ctx_ids + pos0, ids, n * sizeof *ids);
}

static int rewind_to(conn *c, int pos)
{
    char err[300];
    if (c->s && session_rewind(c->s, pos, err, sizeof err)) { conn_fail(c, "%s", err); return -1; }
    if (!c->s && c->b->ops->truncate(c->b, pos)) { conn_fail(c, "%s", c->b->err); return -1; }
    return 0;
}

static void item_pop(conn *c)
{
    item_free(&c->q[c->qh++]);
    if (c->qh == c->qn) c->qh = c->qn = 0;
    c->started = 0;
    free(c->ids);
    c->ids = NULL;
}

/* The head frame's next piece, or 0 when nothing is to compute now (the frame was an
 * error, or done without compute). Mirrors phi3-run's on_tokens. */
static int next_piece(server *sv, conn *c, int chunk, piece *p)
{
    const phi3_config *cf = &sv->m->cfg;
    int V = cf->vocab;
    item *it = &c->q[c->qh];
    if (it->err) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s", it->err);   /* conn_finish frees the queue */
        conn_finish(c, msg);
        return 0;
    }
    if (!c->started) {
        int n_ctx = session_ctx_len(c->s, c->b);
        if (it->has_pos) {
            if (it->pos < 0 || it->pos > n_ctx) {
                conn_fail(c, "frame %ld: tokens pos %lld is not within the context of %d positions", it->index,
                          (long long)it->pos, n_ctx);
                return 0;
            }
            if (it->pos < n_ctx && rewind_to(c, (int)it->pos)) return 0;
            n_ctx = (int)it->pos;
        }
        if ((long long)n_ctx + (long long)it->n > c->b->max_ctx) {
            conn_fail(c, "frame %ld: context of %lld tokens exceeds the limit of %d positions", it->index,
                      (long long)n_ctx + (long long)it->n, c->b->max_ctx);
            return 0;
        }
        c->ids = xmalloc((it->n ? it->n : 1) * sizeof *c->ids);
        for (size_t i = 0; i < it->n; i++) {
            if (it->v[i] < 0 || it->v[i] >= V) {
                conn_fail(c, "frame %ld: token id %lld out of range [0, %d)", it->index, (long long)it->v[i], V);
                return 0;
            }
            c->ids[i] = (int32_t)it->v[i];
        }
        c->pos0 = n_ctx;
        c->done = 0;
        c->started = 1;
        c->empty = it->n == 0;
        if (c->empty) {
            /* an empty frame asks for the logits of the context as it stands */
            if (it->partial) {
                send_tokens(c, NULL, 0, n_ctx);
                item_pop(c);
                return 0;
            }
            if (n_ctx == 0) {
                conn_fail(c, "frame %ld: empty tokens frame with an empty context (no position to predict from)",
                          it->index);
                return 0;
            }
            c->last = c->ctx_ids[n_ctx - 1];
            if (rewind_to(c, n_ctx - 1)) return 0;
            *p = (piece){c, &c->last, 1, lg_for(c, 1, V), 0};
            return 1;
        }
        ctx_note(c, n_ctx, c->ids, it->n);
    }
    if (c->all_logits && chunk > 256) chunk = 256;   /* logits memory, as phi3-run's steps */
    size_t n = it->n, k = n - c->done < (size_t)chunk ? n - c->done : (size_t)chunk;
    /* The piece that crosses original_max reaches past it, so the LongRoPE mode is set
     * once for the frame (a solo phi3-run sets it from the frame's end). */
    size_t at = (size_t)c->pos0 + c->done;
    if (cf->rope_longrope && at <= (size_t)cf->original_max_pos && c->pos0 + n > (size_t)cf->original_max_pos &&
        at + k <= (size_t)cf->original_max_pos)
        k = (size_t)cf->original_max_pos - at + 1;
    if (k > n - c->done) k = n - c->done;
    int last = c->done + k == n;
    float *lg = NULL;
    if (c->all_logits) lg = lg_for(c, k, V);
    else if (last && !it->partial) lg = lg_for(c, 1, V);
    *p = (piece){c, c->ids + c->done, (int)k, lg, c->all_logits};
    return 1;
}

/* After the piece's forward: write what phi3-run writes at this point. */
static void piece_done(server *sv, piece *p)
{
    conn *c = p->c;
    item *it = &c->q[c->qh];
    int V = sv->m->cfg.vocab;
    sv->tokens += p->n;
    c->tokens += p->n;
    if (c->empty) {
        send_tokens(c, NULL, 0, c->pos0);
        send_logits(c, c->pos0, p->lg, (size_t)V);
        item_pop(c);
        return;
    }
    if (c->all_logits) {
        if (c->done == 0) send_tokens(c, c->ids, it->n, c->pos0);
        for (int i = 0; i < p->n; i++)
            send_logits(c, c->pos0 + (int64_t)c->done + i + 1, p->lg + (size_t)i * V, (size_t)V);
    }
    c->done += (size_t)p->n;
    if (c->done < it->n) return;
    if (!c->all_logits) {
        send_tokens(c, c->ids, it->n, c->pos0);
        if (!it->partial) send_logits(c, c->pos0 + (int64_t)it->n, p->lg, (size_t)V);
    }
    item_pop(c);
}

static int runnable(const conn *c)
{
    return c->state == ST_OPEN && c->qn > c->qh && c->out_len - c->out_off < OUT_HIGH;
}

/* CPU: the pieces of the streams without a session (up to 64 tokens each) in one
 * forward; those are marked done (c NULL). On failure (memory) nothing was computed and
 * the pieces go one by one. */
static void batch_forward(server *sv, piece *ps, int np)
{
    backend **bs = xmalloc((size_t)np * sizeof *bs);
    const int32_t **ids = xmalloc((size_t)np * sizeof *ids);
    int *ns = xmalloc((size_t)np * sizeof *ns), *all = xmalloc((size_t)np * sizeof *all);
    float **lgs = xmalloc((size_t)np * sizeof *lgs);
    int k = 0;
    for (int i = 0; i < np; i++) {
        if (ps[i].c->s || ps[i].n > 64) continue;
        bs[k] = ps[i].c->b;
        ids[k] = ps[i].ids;
        ns[k] = ps[i].n;
        lgs[k] = ps[i].lg;
        all[k] = ps[i].all;
        k++;
    }
    double t0 = now_sec();
    if (k > 1 && (sv->use_cuda ? backend_cuda_forward_batch(bs, ids, ns, lgs, all, k)
                               : backend_cpu_forward_batch(&sv->batch_ws, bs, ids, ns, lgs, all, k)) == 0) {
        double dt = now_sec() - t0;
        for (int i = 0; i < np; i++) {
            if (ps[i].c->s || ps[i].n > 64) continue;
            session_stats *st = &ps[i].c->st;
            st->computed += ps[i].n;
            if (ps[i].n > 1) { st->prefill_s += dt; st->prefill_frames++; st->prefill_last_s = dt; st->prefill_last_n = ps[i].n; }
            else { st->decode_s += dt; st->decode_tokens++; }
            piece_done(sv, &ps[i]);
            ps[i].c = NULL;
        }
        sv->batched_steps++;
        long rows = 0;
        for (int i = 0; i < k; i++) rows += ns[i];
        sv->batch_rows_hist[rows <= gemm_get_small_max() ? 0 : 1]++;
        sv->batch_rows_hist[2] += rows;
    }
    free(bs);
    free(ids);
    free(ns);
    free(all);
    free(lgs);
}

static void step(server *sv)
{
    double t0 = now_sec();
    piece *ps = xmalloc((size_t)(sv->nc ? sv->nc : 1) * sizeof *ps);
    int np = 0;
    for (int i = 0; i < sv->nc; i++) {
        conn *c = sv->c[i];
        /* frames answered without compute (errors, partial empties) do not take a turn */
        while (runnable(c) && np < sv->nc) {
            if (next_piece(sv, c, sv->o->chunk, &ps[np])) { np++; break; }
        }
    }
    if (sv->o->batch && (!sv->use_cuda || sv->cuda_owner) && np > 1) batch_forward(sv, ps, np);
    for (int i = 0; i < np; i++) {
        piece *p = &ps[i];
        if (!p->c) continue;
        char err[400];
        if (session_forward(p->c->s, p->c->b, p->ids, p->n, p->lg, p->all, &p->c->st, err, sizeof err)) {
            conn_fail(p->c, "%s", err);
            continue;
        }
        piece_done(sv, p);
    }
    free(ps);
    if (np) {
        sv->steps++;
        sv->batch_sum += np;
        if (np > sv->batch_max) sv->batch_max = np;
        sv->hist[np == 1 ? 0 : np == 2 ? 1 : np <= 4 ? 2 : np <= 8 ? 3 : np <= 16 ? 4 : 5]++;
        sv->busy_s += now_sec() - t0;
    }
}

/* ---- I/O ---- */

static void conn_write(conn *c)
{
    while (c->state != ST_DEAD && c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            c->state = ST_DEAD;         /* EPIPE, ECONNRESET: the client went away */
            return;
        }
        c->out_off += (size_t)w;
    }
    if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
}

static void print_stats(server *sv)
{
    double up = now_sec() - sv->t0;
    phi3_err("server stats: %ld streams served (%d open, %ld refused), %ld tokens computed in %.3f s busy of %.1f s "
             "up (%.1f tok/s aggregate while busy)", sv->served, sv->nc, sv->refused, sv->tokens, sv->busy_s, up,
             sv->busy_s > 0 ? sv->tokens / sv->busy_s : 0.0);
    phi3_err("server stats: %ld steps (%ld batched), %.2f streams per step on average, at most %ld; steps with 1: %ld, "
             "2: %ld, 3-4: %ld, 5-8: %ld, 9-16: %ld, >16: %ld streams", sv->steps, sv->batched_steps,
             sv->steps ? (double)sv->batch_sum / sv->steps : 0.0, sv->batch_max, sv->hist[0], sv->hist[1],
             sv->hist[2], sv->hist[3], sv->hist[4], sv->hist[5]);
    if (sv->batched_steps && !sv->use_cuda)     /* the CPU matmul paths (decode/gemm.c) */
        phi3_err("server stats: batched steps: %.1f token rows on average; %ld with 2..%d rows (few-token matmul: "
                 "weights converted in registers), %ld with more (blocked matmul: weight panels)",
                 (double)sv->batch_rows_hist[2] / sv->batched_steps, sv->batch_rows_hist[0], gemm_get_small_max(),
                 sv->batch_rows_hist[1]);
    for (int i = 0; i < sv->nc; i++) stream_stats(sv, sv->c[i], "open");
}

/* A new stream on the connected socket fd (non-blocking). */
static void conn_add(server *sv, int fd)
{
    conn *c = xcalloc(1, sizeof *c);
    c->fd = fd;
    c->id = ++sv->next_id;
    c->fr = fr_open(fd, 0);
    fw_init(&c->w, -1);
    c->t_open = now_sec();
    if (sv->nc == sv->ccap) {
        sv->ccap = sv->ccap ? 2 * sv->ccap : 16;
        sv->c = xrealloc(sv->c, (size_t)sv->ccap * sizeof *sv->c);
    }
    sv->c[sv->nc++] = c;
    if (sv->admitted >= sv->o->max_streams) {
        sv->refused++;
        conn_fail(c, "server: no room for this stream: %d streams are open (--max-streams %d); retry later",
                  sv->admitted, sv->o->max_streams);
    } else {
        sv->served++;
        sv->admitted++;
        c->admitted = 1;
    }
    if (sv->draining) conn_fail(c, "server is shutting down");
}

static void server_accept(server *sv)
{
    for (;;) {
        int fd = accept4(sv->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ECONNABORTED)
                phi3_err("accept: %s", strerror(errno));
            return;
        }
        struct ucred cr;
        socklen_t cl = sizeof cr;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) || cr.uid != getuid()) {
            if (sv->o->verbose) phi3_err("refused a connection from uid %u", (unsigned)cr.uid);
            close(fd);
            continue;
        }
        conn_add(sv, fd);
    }
}

static void listen_on(server *sv)
{
    char err[300];
    if (server_socket_path(sv->o->socket, 1, sv->path, sizeof sv->path, err, sizeof err)) phi3_die("--serve: %s", err);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, sv->path, strlen(sv->path) + 1);
    sv->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (sv->lfd < 0) phi3_die("socket: %s", strerror(errno));
    mode_t old = umask(0177);           /* the socket is created 0600 */
    int rc = bind(sv->lfd, (struct sockaddr *)&sa, sizeof sa);
    if (rc && errno == EADDRINUSE) {
        /* Replace only a stale socket of ours: one nobody listens on any more. */
        struct stat sb;
        if (lstat(sv->path, &sb) || !S_ISSOCK(sb.st_mode) || sb.st_uid != getuid()) {
            umask(old);
            phi3_die("--serve: %s exists and is not a socket of ours: not replacing it", sv->path);
        }
        int t = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int crc = t < 0 ? -1 : connect(t, (struct sockaddr *)&sa, sizeof sa);
        int ce = errno;
        if (t >= 0) close(t);
        if (crc == 0) { umask(old); phi3_die("--serve: a server is already listening on %s", sv->path); }
        if (ce != ECONNREFUSED) { umask(old); phi3_die("--serve: %s: %s", sv->path, strerror(ce)); }
        if (unlink(sv->path) && errno != ENOENT) { umask(old); phi3_die("--serve: cannot remove the stale socket %s: %s", sv->path, strerror(errno)); }
        rc = bind(sv->lfd, (struct sockaddr *)&sa, sizeof sa);
    }
    int be = errno;
    umask(old);
    if (rc) phi3_die("--serve: cannot bind %s: %s", sv->path, strerror(be));
    struct stat sb;
    if (lstat(sv->path, &sb)) phi3_die("--serve: %s: %s", sv->path, strerror(errno));
    sv->dev = sb.st_dev;
    sv->ino = sb.st_ino;
    if (listen(sv->lfd, 64)) phi3_die("listen: %s", strerror(errno));
}

/* Remove our socket (only if the path still is the one we bound). */
static void unlisten(server *sv)
{
    if (sv->lfd < 0) return;
    struct stat sb;
    if (!lstat(sv->path, &sb) && sb.st_dev == sv->dev && sb.st_ino == sv->ino) unlink(sv->path);
    close(sv->lfd);
    sv->lfd = -1;
}

static server *the_server;              /* for the exit path of phi3_die */
static void unlisten_at_exit(void)
{
    if (the_server) unlisten(the_server);
}

/* The event loop: until drained (SIGTERM), or a single-stream server's stream is over. */
static void serve(server *sv)
{
    struct pollfd *pf = NULL;
    int pcap = 0;
    for (;;) {
        if (got_term && !sv->draining) {
            sv->draining = 1;
            unlisten(sv);
            /* the frames that have arrived are answered; nothing later is read */
            for (int i = 0; i < sv->nc; i++) {
                conn_read(sv, sv->c[i]);
                sv->c[i]->in_eof = 1;
            }
            if (sv->o->verbose || sv->o->stats) phi3_err("draining %d streams", sv->nc);
        }
        if (got_term > 1) phi3_die("second signal: stopping now with %d streams open", sv->nc);
        if (got_usr1) {
            got_usr1 = 0;
            print_stats(sv);
        }
        /* retire the streams that are over */
        int work = 0;
        for (int i = 0; i < sv->nc; i++) {
            conn *c = sv->c[i];
            if (c->state == ST_OPEN && c->in_eof && c->qn == c->qh)
                /* a stream cut by the drain is told so; one whose input ended gets done */
                conn_finish(c, c->eof_seen ? NULL : "server is shutting down (SIGTERM): later frames were not read");
            if (c->state == ST_DEAD || (c->state == ST_CLOSING && c->out_off == c->out_len)) {
                conn_free(sv, c);
                sv->c[i--] = sv->c[--sv->nc];
                continue;
            }
            if (runnable(c)) work = 1;
        }
        if ((sv->draining || sv->single) && sv->nc == 0) break;
        int need = sv->nc + 2;
        if (need > pcap) {
            pcap = need * 2;
            pf = xrealloc(pf, (size_t)pcap * sizeof *pf);
        }
        int np = 0;
        pf[np++] = (struct pollfd){.fd = sv->sigr, .events = POLLIN};
        if (sv->lfd >= 0) pf[np++] = (struct pollfd){.fd = sv->lfd, .events = POLLIN};
        int base = np;
        for (int i = 0; i < sv->nc; i++) {
            conn *c = sv->c[i];
            short ev = 0;
            if (c->state == ST_OPEN && !c->in_eof && c->qn - c->qh < QUEUE_HIGH) ev |= POLLIN;
            if (c->out_off < c->out_len) ev |= POLLOUT;
            pf[np++] = (struct pollfd){.fd = c->fd, .events = ev};
        }
        int pr = poll(pf, (nfds_t)np, work ? 0 : -1);
        if (pr < 0 && errno != EINTR) phi3_die("poll: %s", strerror(errno));
        if (pr > 0) {
            if (pf[0].revents) {
                char buf[64];
                while (read(sv->sigr, buf, sizeof buf) > 0) {}
            }
            if (sv->lfd >= 0 && pf[1].revents) server_accept(sv);
            for (int i = 0; i < np - base && i < sv->nc; i++) {
                conn *c = sv->c[i];
                short re = pf[base + i].revents;
                if (c->fd != pf[base + i].fd) continue;
                if (re & (POLLHUP | POLLERR | POLLNVAL)) {
                    /* the client closed both directions (or died): nobody to answer */
                    c->state = ST_DEAD;
                    continue;
                }
                if (re & POLLOUT) conn_write(c);
            }
        }
        /* every stream, readable or not: frames may wait in its reader's buffer */
        for (int i = 0; i < sv->nc; i++) conn_read(sv, sv->c[i]);
        step(sv);
        for (int i = 0; i < sv->nc; i++)
            if (sv->c[i]->out_off < sv->c[i]->out_len) conn_write(sv->c[i]);
    }
    free(pf);
}

int server_main(const server_opts *o)
{
    server sv = {.o = o, .lfd = -1};
    char err[512];
    double t0 = now_sec();
    sv.m = model_load(o->model_dir, err, sizeof err);
    if (!sv.m) phi3_die("%s", err);
    const phi3_config *cf = &sv.m->cfg;
    if (o->ctx > cf->max_pos)
        phi3_die("--ctx %d exceeds max_position_embeddings %d of %s", o->ctx, cf->max_pos, o->model_dir);
    sv.use_cuda = !strcmp(o->backend, "cuda") || (!strcmp(o->backend, "auto") && o->kv_type != KV_F16 &&
                                                   backend_cuda_supports(sv.m) && backend_cuda_available());
    if (!sv.use_cuda) model_populate(sv.m);
    /* The opt-in limb kernels (qlimb.h) serve products of 1..3 tokens only, so a stream's
     * numbers would depend on what else shares its step (and on where its prefill is cut
     * into pieces): a served stream must equal its solo run on the exact path. */
    if (!sv.use_cuda && qlimb_enabled()) {
        qlimb_force(0);
        if (!o->quiet) phi3_err("PHI3_QUANT_LIMBS=1 is not used by --serve: streams are computed on the exact kernels");
    }
    if (sv.use_cuda) {
        /* fail now rather than at the first stream */
        backend *b = backend_cuda_new(sv.m, o->ctx, err, sizeof err);
        if (!b) phi3_die("cuda backend: %s", err);
        /* opt-in: it stays, holding the one copy of the weights the streams read */
        if (o->batch && backend_cuda_batch_enabled()) sv.cuda_owner = b;
        else b->ops->destroy(b);
    }
    int sp[2];
    if (pipe2(sp, O_NONBLOCK | O_CLOEXEC)) phi3_die("pipe: %s", strerror(errno));
    sv.sigr = sp[0];
    sv.sigw = sig_wfd = sp[1];
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    listen_on(&sv);
    the_server = &sv;
    atexit(unlisten_at_exit);
    if (!strcmp(o->backend, "auto") && !o->quiet)
        phi3_err("backend %s%s", sv.use_cuda ? "cuda" : "cpu", sv.use_cuda ? "" : " (no CUDA device)");
    if (o->verbose)
        phi3_err("model %s: %d layers, hidden %d, vocab %d, fingerprint %s, loaded in %.2f s; serving on %s "
                 "(max %d streams, KV budget %s, %s)", o->model_dir, cf->n_layers, cf->hidden, cf->vocab,
                 sv.m->fingerprint_hex, now_sec() - t0, sv.path, o->max_streams,
                 o->kv_budget > 0 ? "set" : "none",
                 o->batch && (!sv.use_cuda || sv.cuda_owner) ? "batched" : "one forward per stream");
    sv.t0 = now_sec();
    serve(&sv);
    if (o->stats) print_stats(&sv);
    free(sv.c);
    unlisten(&sv);
    the_server = NULL;
    backend_cpu_batch_free(sv.batch_ws);
    if (sv.pool_owner) sv.pool_owner->ops->destroy(sv.pool_owner);
    if (sv.cuda_owner) sv.cuda_owner->ops->destroy(sv.cuda_owner);   /* after every stream's */
    model_free(sv.m);
    return 0;
}

int server_serve_fd(struct phi3_model *m, const server_opts *o, int fd)
{
    server sv = {.o = o, .m = m, .lfd = -1, .sigr = -1, .sigw = -1, .single = 1};
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK)) return -1;
    sv.t0 = now_sec();
    conn_add(&sv, fd);
    serve(&sv);
    free(sv.c);
    backend_cpu_batch_free(sv.batch_ws);
    if (sv.pool_owner) sv.pool_owner->ops->destroy(sv.pool_owner);
    return 0;
}
