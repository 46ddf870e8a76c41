/* phi3-run: tokens frames in, logits frames out; holds the model and its KV cache. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "decode/backend.h"
#include "decode/cpu.h"
#include "decode/server.h"
#include "decode/session.h"
#include "embed/model.h"
#include "shared/stream.h"
#include "shared/util.h"

static const char usage[] =
"usage: phi3-run [-m DIR] [options] < tokens-stream > logits-stream\n"
"\n"
"Reads tokens frames and appends their ids to the context. For each one it writes the\n"
"same tokens frame (ids, pos = position of ids[0]) so a sampler downstream sees the\n"
"context, then one logits frame for the last position: pos = the context length after\n"
"these tokens (the position the logits predict), data = float32 x vocab. A tokens frame\n"
"whose pos is behind the context rewinds it to pos first; one with partial=true (more of\n"
"the same prompt follows, as phi3-template | phi3-tok mark it) gets no logits frame.\n"
"An empty tokens frame (ids []) that is not partial gets the logits of the context as\n"
"it stands (after its pos), pos = the context length; with an empty context it is an\n"
"error. end frames (a finished turn)\n"
"are consumed and not forwarded; other frame types are ignored. Runs until end of input.\n"
"\n"
"  -m, --model DIR        Hugging Face model directory, or a GGUF file (docs/GGUF.md)\n"
"                         (default $PHI3_MODEL)\n"
"      --backend B        auto (CUDA if a device is present, else CPU; says which on\n"
"                         stderr unless -q), cpu, or cuda (default auto)\n"
"      --threads N        CPU threads (default: every core)\n"
"      --all-logits       one logits frame per input position (pos = position + 1)\n"
"      --ctx N            context limit in positions (default max_position_embeddings)\n"
"      --kv-type T        CPU backend: f32 (default; logits within 1e-5 of transformers)\n"
"                         or f16 (half the KV memory and session size); a session\n"
"                         keeps its type, and without --kv-type a run takes it\n"
"  -v, --verbose          model, weights, context size and memory on stderr\n"
"  -q, --quiet            no backend line from --backend auto\n"
"      --session NAME     keep the context in the shared-memory session NAME and reuse\n"
"                         its longest matching prefix (docs/SESSIONS.md)\n"
"      --no-wait          fail at once if another phi3-run writes the session\n"
"      --session-list     list the sessions (name, tokens, bytes, model, state); no model\n"
"      --session-info NAME  one JSON object describing NAME; no model needed\n"
"      --session-rm NAME  remove NAME (waits for its writer unless --no-wait)\n"
"      --stats            at exit on stderr: tokens reused and computed, prefill and\n"
"                         decode time (--serve: streams, tok/s, batch sizes; also on SIGUSR1)\n"
"      --serve SOCKET     load the model once and serve streams on a Unix socket: a path,\n"
"                         or a NAME under $XDG_RUNTIME_DIR/phi3/ (docs/SERVER.md)\n"
"      --max-streams N    --serve: streams open at once (default 64)\n"
"      --kv-budget BYTES  --serve: KV cache reserved by all streams, each stream's --ctx\n"
"                         (or the server's) times the bytes per position (K/M/G suffix)\n"
"      --chunk N          --serve: prefill tokens per stream per step (default 64)\n"
"      --no-batch         --serve: one forward per stream and step instead of one over all\n"
"                         streams (CPU; the CUDA backend always runs one per stream)\n"
"      --connect SOCKET   be this pipeline stage through a phi3-run --serve: stdin and\n"
"                         stdout as without it; per stream: --all-logits, --ctx, --session\n"
"  -h, --help, --version\n"
"\n"
"LongRoPE: while the context is <= original_max_position_embeddings the short factors\n"
"apply; once it grows past that, the whole context is recomputed with the long factors\n"
"(what a fresh pass over the sequence gives), and a rewind below it switches back.\n"
"\n"
"Exit: 0 ok (also when the reader of stdout goes away); 1 bad input (model files, a\n"
"token id outside the vocabulary, a context beyond the limit, a broken stream);\n"
"2 the command line cannot be understood.\n";

enum { OPT_BACKEND = 256, OPT_THREADS, OPT_ALL, OPT_CTX, OPT_VERSION, OPT_SESSION, OPT_NOWAIT,
       OPT_SLIST, OPT_SINFO, OPT_SRM, OPT_STATS, OPT_SERVE, OPT_CONNECT, OPT_MAXSTREAMS, OPT_KVBUDGET,
       OPT_CHUNK, OPT_NOBATCH, OPT_KVTYPE };

/* BYTES with an optional K, M or G suffix (powers of 1024). */
static long long opt_bytes(const char *name, const char *s)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    int sh = *end == 'K' ? 10 : *end == 'M' ? 20 : *end == 'G' ? 30 : 0;
    if (sh) end++;
    if (errno || end == s || *end || v < 1 || v > (1LL << (62 - sh)))
        phi3_usage_die("%s: expected a byte count (K, M or G suffix allowed), got '%s'", name, s);
    return v << sh;
}

/* The state of one run: the model, its backend, the output stream. */
typedef struct run {
    phi3_model *m;
    backend *b;
    frame_writer w;
    int all_logits, verbose;
    float *logits;              /* [cap_positions * vocab] */
    size_t logits_cap;          /* positions */
    long tokens;                /* ids consumed */
    int32_t *ctx;               /* the context's ids (an empty frame recomputes the last) */
    size_t ctx_cap;
    session *s;                 /* --session, or NULL */
    session_stats st;
} run;

static long opt_long(const char *name, const char *s, long lo, long hi)
{
    long v;
    if (parse_long(s, &v) || v < lo || v > hi)
        phi3_usage_die("%s: expected an integer in [%ld, %ld], got '%s'", name, lo, hi, s);
    return v;
}

static float *logits_for(run *r, size_t positions)
{
    if (positions > r->logits_cap) {
        size_t bytes;
        if (__builtin_mul_overflow(positions, (size_t)r->m->cfg.vocab * sizeof(float), &bytes))
            phi3_die("--all-logits: %zu positions are too many", positions);
        r->logits = xrealloc(r->logits, bytes);
        r->logits_cap = positions;
    }
    return r->logits;
}

static void forward_or_die(run *r, const int32_t *ids, int n, float *logits, int all)
{
    char err[300];
    if (session_forward(r->s, r->b, ids, n, logits, all, &r->st, err, sizeof err)) phi3_die("%s", err);
}

/* Rewind the context to pos (< its length). */
static void rewind_or_die(run *r, int pos)
{
    char err[300];
    if (r->s && session_rewind(r->s, pos, err, sizeof err)) phi3_die("%s", err);
    if (!r->s && r->b->ops->truncate(r->b, pos)) phi3_die("%s", r->b->err);
}

/* Keep the context's ids: ids[0..n) now hold positions [pos0, pos0 + n). */
static void ctx_note(run *r, int pos0, const int32_t *ids, size_t n)
{
    if ((size_t)pos0 + n > r->ctx_cap) {
        r->ctx_cap = ((size_t)pos0 + n) * 2;
        r->ctx = xrealloc(r->ctx, r->ctx_cap * sizeof *r->ctx);
    }
    memcpy(r->ctx + pos0, ids, n * sizeof *ids);
}

/* An empty tokens frame that is not partial asks for the logits of the context as it is
 * (after its pos, if it rewinds): the last position is computed again. */
static void on_empty(run *r, const frame *f, int n_ctx, bool partial)
{
    if (partial) {
        fw_tokens(&r->w, NULL, 0, n_ctx);
        return;
    }
    if (n_ctx == 0)
        phi3_die("frame %ld: empty tokens frame with an empty context (no position to predict from)",
                 f->index);
    int32_t last = r->ctx[n_ctx - 1];
    rewind_or_die(r, n_ctx - 1);
    float *lg = logits_for(r, 1);
    forward_or_die(r, &last, 1, lg, 0);
    fw_tokens(&r->w, NULL, 0, n_ctx);
    fw_logits(&r->w, n_ctx, lg, (size_t)r->m->cfg.vocab);
}

/* One tokens frame: validate, append, forward the frame, write the logits (none for a
 * frame with partial: true, unless --all-logits). */
static void on_tokens(run *r, const frame *f)
{
    const phi3_config *cf = &r->m->cfg;
    int64_t *v, pos;
    size_t n, bad;
    int rc = frame_ints(f, "ids", &v, &n, &bad);
    if (rc == 0) phi3_die("frame %ld: tokens frame without ids", f->index);
    if (rc < 0) phi3_die("frame %ld: tokens ids[%zu] is not an integer", f->index, bad);
    bool partial = false;
    if (frame_bool(f, "partial", &partial) < 0) phi3_die("frame %ld: tokens partial is not a boolean", f->index);
    rc = frame_int(f, "pos", &pos);
    if (rc < 0) phi3_die("frame %ld: tokens pos is not an integer", f->index);
    int n_ctx = session_ctx_len(r->s, r->b);   /* the session may hold another state */
    if (rc > 0) {
        if (pos < 0 || pos > n_ctx)
            phi3_die("frame %ld: tokens pos %lld is not within the context of %d positions", f->index,
                     (long long)pos, n_ctx);
        if (pos < n_ctx) rewind_or_die(r, (int)pos);
        n_ctx = (int)pos;
    }
    if ((long long)n_ctx + (long long)n > r->b->max_ctx)
        phi3_die("frame %ld: context of %lld tokens exceeds the limit of %d positions", f->index,
                 (long long)n_ctx + (long long)n, r->b->max_ctx);
    int32_t *ids = xmalloc((n ? n : 1) * sizeof *ids);
    for (size_t i = 0; i < n; i++) {
        if (v[i] < 0 || v[i] >= cf->vocab)
            phi3_die("frame %ld: token id %lld out of range [0, %d)", f->index, (long long)v[i], cf->vocab);
        ids[i] = (int32_t)v[i];
    }
    free(v);
    if (n == 0) {
        free(ids);
        on_empty(r, f, n_ctx, partial);
        return;
    }
    int pos0 = n_ctx, V = cf->vocab;
    ctx_note(r, pos0, ids, n);
    if (partial && !r->all_logits) {
        /* more of the same prompt follows (partial: true): append, forward, no logits */
        forward_or_die(r, ids, (int)n, NULL, 0);
        fw_tokens(&r->w, ids, n, pos0);
    } else if (!r->all_logits) {
        float *lg = logits_for(r, 1);
        forward_or_die(r, ids, (int)n, lg, 0);
        fw_tokens(&r->w, ids, n, pos0);
        fw_logits(&r->w, pos0 + (int64_t)n, lg, (size_t)V);
    } else {
        /* Chunks bound the memory; the first one reaches past original_max when the
         * frame crosses it, so that every position sees the factors of the whole
         * sequence (later chunks do not change the mode). */
        size_t step = 256, done = 0;
        if (cf->rope_longrope && pos0 <= cf->original_max_pos && pos0 + n > (size_t)cf->original_max_pos)
            step = (size_t)cf->original_max_pos - pos0 + 1 > step ? (size_t)cf->original_max_pos - pos0 + 1 : step;
        int forwarded = 0;
        while (done < n) {
            size_t k = n - done < step ? n - done : step;
            float *lg = logits_for(r, k);
            forward_or_die(r, ids + done, (int)k, lg, 1);
            if (!forwarded++) fw_tokens(&r->w, ids, n, pos0);
            for (size_t i = 0; i < k; i++)
                fw_logits(&r->w, pos0 + (int64_t)(done + i) + 1, lg + i * V, (size_t)V);
            done += k;
            step = 256;
        }
    }
    r->tokens += (long)n;
    free(ids);
}

/* --stats at any exit (a loop's sampler going away ends phi3-run through EPIPE). */
static const session_stats *stats_at_exit;
static void print_stats(void) { session_stats_print(stats_at_exit); }

static double peak_rss_mib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0;
}

int main(int argc, char **argv)
{
    phi3_init("phi3-run");
    const char *mdir = NULL, *bname = "auto", *sname = NULL, *sinfo = NULL, *srm = NULL;
    int nowait = 0, slist = 0, stats = 0, kvt = -1;
    long threads = 0, ctx = 0, max_streams = 64, chunk = 64;
    long long kv_budget = 0;
    int nobatch = 0;
    const char *serve = NULL, *conn = NULL;
    int all = 0, verbose = 0, quiet = 0, c;
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"backend", required_argument, 0, OPT_BACKEND},
        {"threads", required_argument, 0, OPT_THREADS}, {"all-logits", no_argument, 0, OPT_ALL},
        {"ctx", required_argument, 0, OPT_CTX}, {"verbose", no_argument, 0, 'v'},
        {"quiet", no_argument, 0, 'q'}, {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, OPT_VERSION}, {"session", required_argument, 0, OPT_SESSION},
        {"no-wait", no_argument, 0, OPT_NOWAIT}, {"session-list", no_argument, 0, OPT_SLIST},
        {"session-info", required_argument, 0, OPT_SINFO}, {"session-rm", required_argument, 0, OPT_SRM},
        {"stats", no_argument, 0, OPT_STATS}, {"serve", required_argument, 0, OPT_SERVE},
        {"connect", required_argument, 0, OPT_CONNECT}, {"max-streams", required_argument, 0, OPT_MAXSTREAMS},
        {"kv-budget", required_argument, 0, OPT_KVBUDGET}, {"chunk", required_argument, 0, OPT_CHUNK},
        {"no-batch", no_argument, 0, OPT_NOBATCH}, {"kv-type", required_argument, 0, OPT_KVTYPE},
        {0, 0, 0, 0}};
    while ((opterr = 0, c = getopt_long(argc, argv, ":m:vqh", opts, NULL)) != -1) {
        switch (c) {
        case 'm': mdir = optarg; break;
        case OPT_BACKEND: bname = optarg; break;
        case OPT_THREADS: threads = opt_long("--threads", optarg, 1, 1024); break;
        case OPT_ALL: all = 1; break;
        case OPT_CTX: ctx = opt_long("--ctx", optarg, 1, 1L << 30); break;
        case 'v': verbose = 1; break;
        case 'q': quiet = 1; break;
        case 'h': fputs(usage, stdout); return 0;
        case OPT_VERSION: printf("phi3-run %s\n", PHI3_VERSION); return 0;
        case OPT_SESSION: sname = optarg; break;
        case OPT_NOWAIT: nowait = 1; break;
        case OPT_SLIST: slist = 1; break;
        case OPT_SINFO: sinfo = optarg; break;
        case OPT_SRM: srm = optarg; break;
        case OPT_STATS: stats = 1; break;
        case OPT_SERVE: serve = optarg; break;
        case OPT_CONNECT: conn = optarg; break;
        case OPT_MAXSTREAMS: max_streams = opt_long("--max-streams", optarg, 1, 4096); break;
        case OPT_KVBUDGET: kv_budget = opt_bytes("--kv-budget", optarg); break;
        case OPT_CHUNK: chunk = opt_long("--chunk", optarg, 1, 65536); break;
        case OPT_NOBATCH: nobatch = 1; break;
        case OPT_KVTYPE:
            if (!strcmp(optarg, "f32")) kvt = KV_F32;
            else if (!strcmp(optarg, "f16")) kvt = KV_F16;
            else phi3_usage_die("--kv-type: expected f32 or f16, got '%s'", optarg);
            break;
        default: phi3_bad_option(argv, c);
        }
    }
    if (optind < argc) phi3_usage_die("unexpected operand '%s' (see --help)", argv[optind]);
    if (strcmp(bname, "auto") && strcmp(bname, "cpu") && strcmp(bname, "cuda"))
        phi3_usage_die("--backend: expected auto, cpu or cuda, got '%s'", bname);
    if (kvt == KV_F16 && !strcmp(bname, "cuda"))
        phi3_usage_die("--kv-type f16 applies to the CPU backend (the CUDA backend keeps its own fp16 cache)");
    if (slist + !!sinfo + !!srm > 1 || ((slist || sinfo || srm) && sname))
        phi3_usage_die("--session-list, --session-info, --session-rm and --session exclude each other");
    if (serve && conn) phi3_usage_die("--serve and --connect exclude each other");
    if ((serve || conn) && (slist || sinfo || srm))
        phi3_usage_die("--serve/--connect and the session management options exclude each other");
    if (conn) {   /* the model and the backend are the server's; -m etc. are accepted and unused */
        client_opts co = {.socket = conn, .session = sname, .all_logits = all, .ctx = (int)ctx};
        return client_main(&co);
    }
    if (serve && (sname || all || nowait))
        phi3_usage_die("--session, --no-wait and --all-logits are per stream: give them to --connect");
    if (slist || sinfo || srm) {   /* session management: no model */
        char err[512];
        int bad = slist ? session_list(stdout, err, sizeof err)
                : sinfo ? session_info(sinfo, stdout, err, sizeof err) : session_remove(srm, nowait, err, sizeof err);
        if (bad) phi3_die("%s", err);
        return 0;
    }
    mdir = phi3_model_dir(mdir);
    if (!mdir) phi3_usage_die("no model directory: give -m DIR or set PHI3_MODEL");

    if (serve) {
        server_opts so = {.socket = serve, .model_dir = mdir, .backend = bname, .threads = (int)threads,
                          .ctx = (int)ctx, .max_streams = (int)max_streams, .kv_budget = kv_budget,
                          .chunk = (int)chunk, .batch = !nobatch, .kv_type = kvt, .stats = stats, .verbose = verbose, .quiet = quiet};
        return server_main(&so);
    }
    /* static: --stats prints r.st from an atexit handler, which also runs after main returns */
    static run r;
    r = (run){.all_logits = all, .verbose = verbose};
    char err[512];
    double t0 = now_sec();
    r.m = model_load(mdir, err, sizeof err);
    if (!r.m) phi3_die("%s", err);
    const phi3_config *cf = &r.m->cfg;
    if (ctx > cf->max_pos)
        phi3_die("--ctx %ld exceeds max_position_embeddings %d of %s", ctx, cf->max_pos, mdir);
    int cuda_ok = backend_cuda_supports(r.m);
    int cuda_sess = !sname || getenv(PHI3_CUDA_SESSIONS_ENV);
    int use_cuda = !strcmp(bname, "cuda") ||
                   (!strcmp(bname, "auto") && kvt != KV_F16 && cuda_ok && cuda_sess && backend_cuda_available());
    if (use_cuda && !cuda_sess)
        phi3_die("--session with the cuda backend: session layout 2 has not yet run on a GPU; set %s=1 to "
                 "use it anyway, or --backend cpu", PHI3_CUDA_SESSIONS_ENV);
    if (sname && !(r.s = session_open_kv(sname, r.m, (int)ctx, nowait, kvt, err, sizeof err))) phi3_die("%s", err);
    kv_store kv;
    if (r.s) kv = session_kv(r.s);     /* CPU: the KV cache lives in the session's memory */
    if (use_cuda) r.b = backend_cuda_new(r.m, (int)ctx, err, sizeof err);
    else r.b = backend_cpu_new(r.m, (int)ctx, (int)threads, r.s ? &kv : NULL, err, sizeof err);
    if (!r.b) phi3_die("%s backend: %s", use_cuda ? "cuda" : "cpu", err);
    if (!use_cuda) model_populate(r.m);
    if (!use_cuda && !r.s && kvt == KV_F16 && backend_cpu_set_kv_type(r.b, KV_F16)) phi3_die("%s", r.b->err);
    if (r.s) session_attach(r.s, r.b, (int)threads);
    if (!strcmp(bname, "auto") && !quiet)
        phi3_err("backend %s%s", r.b->ops->name, use_cuda ? "" : " (no CUDA device)");
    if (verbose) {
        phi3_err("model %s: %d layers, hidden %d, heads %d/%d, vocab %d, %s, weights %.1f MiB in %d "
                 "shard(s) (mmapped), fingerprint %s, loaded in %.2f s",
                 mdir, cf->n_layers, cf->hidden, cf->n_heads, cf->n_kv_heads, cf->vocab,
                 cf->rope_longrope ? "longrope" : "rope", r.m->weight_bytes / 1048576.0, r.m->n_shards,
                 r.m->fingerprint_hex, now_sec() - t0);
        kv_type t = r.s ? session_kv(r.s).type : kvt == KV_F16 ? KV_F16 : KV_F32;
        phi3_err("context limit %d positions (KV %s, %.1f KiB per position)", r.b->max_ctx, kv_type_name(t),
                 kv_pos_floats(r.m) * kv_type_size(t) / 1024.0);
    }

    if (stats) {
        stats_at_exit = &r.st;
        atexit(print_stats);
    }
    fw_init(&r.w, 1);
    frame_reader *fr = fr_open(0, 0);
    frame f;
    int rc;
    t0 = now_sec();
    while ((rc = fr_next(fr, &f)) == 1) {
        if (!strcmp(f.type, "tokens")) on_tokens(&r, &f);
        /* "end" closes a turn: nothing to do, the context stays for the next one. */
        frame_free(&f);
    }
    if (rc < 0) phi3_die("%s", fr_error(fr));
    if (verbose)
        phi3_err("context %d positions, %ld tokens in %.2f s (%.2f tok/s), KV cache %.1f MiB, peak RSS "
                 "%.1f MiB", r.b->n_ctx, r.tokens, now_sec() - t0,
                 r.tokens / (now_sec() - t0 > 0 ? now_sec() - t0 : 1), use_cuda ? 0.0 : backend_cpu_kv_bytes(r.b) / 1048576.0,
                 peak_rss_mib());
    fr_close(fr);
    fw_destroy(&r.w);
    r.b->ops->destroy(r.b);
    session_close(r.s);
    free(r.logits);
    free(r.ctx);
    model_free(r.m);
    return 0;
}
