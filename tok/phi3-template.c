/* phi3-template: chat messages -> the Phi-3 chat template as text frames (template parts
 * special=true, message content special=false), implemented natively. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shared/stream.h"
#include "shared/util.h"
#include "embed/gguf.h"
#include "tok/tokenizer.h"

#define JSON_MAX ((size_t)256 << 20)

static const char usage[] =
    "usage: phi3-template [-m DIR] [--json] [--no-generation-prompt] [FILE] < messages > text-frames\n"
    "  FILE (or stdin when none or -) holds the messages.\n"
    "  Render a chat with Phi-3's template:\n"
    "    <|system|>\\n{content}<|end|>\\n  <|user|>\\n...  <|assistant|>\\n...  then\n"
    "    <|assistant|>\\n (the generation prompt) or, with --no-generation-prompt, the\n"
    "    eos_token (<|endoftext|>; from DIR/tokenizer_config.json, or a GGUF file's eos id,\n"
"    when -m or $PHI3_MODEL).\n"
    "  Input: `message` frames {role, content}, or with --json one JSON array of\n"
    "  {\"role\": ..., \"content\": ...} objects (the transformers format).\n"
    "  Output: `text` frames; template parts have special=true, message content\n"
    "  special=false, so phi3-tok never turns content into control tokens. Every frame but\n"
    "  the last has partial=true: phi3-run computes logits only at the end of the prompt.\n"
    "  All messages are checked before anything is written.\n";

typedef struct msg { int role; const char *s; size_t n; } msg;
static const char *const role_names[] = {"system", "user", "assistant"};
static const char *const role_tags[] = {"<|system|>\n", "<|user|>\n", "<|assistant|>\n"};

static int role_of(const char *s, size_t n)
{
    for (int i = 0; i < 3; i++)
        if (strlen(role_names[i]) == n && memcmp(role_names[i], s, n) == 0) return i;
    return -1;
}

static void check_message(long k, const char *role, size_t rn, const char *content,
                          size_t cn, msg *m)
{
    m->role = role_of(role, rn);
    if (m->role < 0)
        phi3_die("message %ld: unknown role '%.*s' (system, user or assistant)", k,
                 (int)(rn > 40 ? 40 : rn), role);
    long bad = tok_utf8_check(content, cn);
    if (bad >= 0) phi3_die("message %ld: content is not valid UTF-8 (byte %ld)", k, bad);
    /* Its text frame must fit the frame cap every reader enforces (64 bytes cover the
     * rest of the frame). Split in two frames, the content would tokenize differently. */
    if (cn > frame_cap() - 64)
        phi3_die("message %ld: content of %zu bytes does not fit in one frame (cap %zu bytes, "
                 "$PHI3_MAX_FRAME)", k, cn, frame_cap());
    m->s = content;
    m->n = cn;
}

static char *read_stdin(size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        if (n == cap) {
            if (cap >= JSON_MAX) phi3_die("stdin: input larger than %zu MiB", JSON_MAX >> 20);
            buf = xrealloc(buf, cap *= 2);
        }
        ssize_t r = read(0, buf + n, cap - n);
        if (r < 0) {
            if (errno == EINTR) continue;
            phi3_die("stdin: %s", strerror(errno));
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    *len = n;
    return buf;
}

/* eos_token of DIR/tokenizer_config.json (a string or an AddedToken object). */
static char *config_eos(const char *dir)
{
    char path[4096];
    if (gguf_is_path(dir)) {            /* -m FILE.gguf: the text of its eos id */
        tok *t = tok_load(dir, path, sizeof path);
        if (!t) phi3_die("%s", path);
        if (!tok_eos_token(t)) phi3_die("%s: no tokenizer.ggml.eos_token_id", dir);
        char *s = xstrdup(tok_eos_token(t));
        tok_free(t);
        return s;
    }
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    json_t *root = tok_json_file(path, false, (size_t)256 << 20);   /* the tokenizer's own limit */
    json_t *v = json_object_get(root, "eos_token");
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (!json_is_string(v)) phi3_die("%s: no eos_token string", path);
    char *s = xstrdup(json_string_value(v));
    json_decref(root);
    return s;
}

/* Frames are written one behind, so that every text frame of the prompt but the last can
 * say partial: true (more of the same prompt follows: phi3-run then computes no logits
 * for it, and a sampler downstream is not asked for a token in the middle of a prompt). */
typedef struct pending { tok_buf text; bool special, has; } pending;

static void emit(frame_writer *w, pending *p, bool partial)
{
    if (!p->has) return;
    if (p->text.n > frame_cap() - 64)
        phi3_die("a template part of %zu bytes does not fit in one frame (cap %zu bytes)",
                 p->text.n, frame_cap());
    fw_begin(w, "text", partial ? 3 : 2);
    fw_str(w, "text", p->text.p, p->text.n);
    fw_bool(w, "special", p->special);
    if (partial) fw_bool(w, "partial", true);
    fw_end_or_exit(w);
    p->has = false;
}

static void queue(frame_writer *w, pending *p, const char *s, size_t n, bool special)
{
    emit(w, p, true);
    p->text.n = 0;
    if (p->text.cap < n + 1) {
        p->text.cap = n + 1;
        p->text.p = xrealloc(p->text.p, p->text.cap);
    }
    memcpy(p->text.p, s, n);
    p->text.n = n;
    p->special = special;
    p->has = true;
}

/* Special parts accumulate and are queued as one frame before the next content. */
static void flush_special(frame_writer *w, pending *p, tok_buf *sp)
{
    if (!sp->n) return;
    queue(w, p, sp->p, sp->n, true);
    sp->n = 0;
}

static void add(tok_buf *b, const char *s)
{
    size_t n = strlen(s);
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, n + 1);
    b->n += n;
}

int main(int argc, char **argv)
{
    phi3_init("phi3-template");
    const char *mdir = NULL;
    bool json = false, gen = true;
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"json", no_argument, 0, 'j'},
        {"no-generation-prompt", no_argument, 0, 'n'}, {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'}, {0, 0, 0, 0}};
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'm': mdir = optarg; break;
        case 'j': json = true; break;
        case 'n': gen = false; break;
        case 'h': fputs(usage, stdout); return 0;
        case 'V': printf("phi3-template %s\n", PHI3_VERSION); return 0;
        default: phi3_bad_option(argv, c);
        }
    }
    phi3_input_operand(argc, argv, optind);
    mdir = phi3_model_dir(mdir);
    /* Static: what is live when phi3_die exits stays reachable (no LeakSanitizer noise). */
    static char *eos;
    static msg *msgs;
    static json_t *root;
    static frame_reader *r;
    static frame *frames;                 /* kept alive: msgs point into them */
    static frame f;
    eos = gen ? NULL : mdir ? config_eos(mdir) : xstrdup("<|endoftext|>");

    size_t n = 0, cap = 0;
    if (json) {
        size_t len;
        char *buf = read_stdin(&len);
        json_error_t je;
        root = json_loadb(buf, len, JSON_ALLOW_NUL, &je);
        free(buf);
        if (!root) phi3_die("stdin: bad JSON at line %d column %d: %s", je.line, je.column, je.text);
        if (!json_is_array(root)) phi3_die("stdin: expected a JSON array of {role, content}");
        n = json_array_size(root);
        msgs = xcalloc(n ? n : 1, sizeof *msgs);
        for (size_t i = 0; i < n; i++) {
            json_t *o = json_array_get(root, i);
            if (!json_is_object(o)) phi3_die("message %zu: not an object", i + 1);
            json_t *jr = json_object_get(o, "role"), *jc = json_object_get(o, "content");
            if (!json_is_string(jr)) phi3_die("message %zu: missing role", i + 1);
            if (!jc || json_is_null(jc)) phi3_die("message %zu: missing content", i + 1);
            if (!json_is_string(jc)) phi3_die("message %zu: content is not a string", i + 1);
            check_message((long)i + 1, json_string_value(jr), json_string_length(jr),
                          json_string_value(jc), json_string_length(jc), &msgs[i]);
        }
    } else {
        r = fr_open(0, 0);
        int rc;
        size_t fcap = 0, nf = 0;
        while ((rc = fr_next(r, &f)) == 1) {
            if (strcmp(f.type, "message") != 0) { frame_free(&f); continue; }
            const char *role, *content; size_t rn, cn;
            if (frame_str(&f, "role", &role, &rn) != 1) phi3_die("message %zu (frame %ld): missing role", n + 1, f.index);
            int k = frame_str(&f, "content", &content, &cn);
            if (k == 0) phi3_die("message %zu (frame %ld): missing content", n + 1, f.index);
            if (k < 0) phi3_die("message %zu (frame %ld): content is not a string", n + 1, f.index);
            if (n == cap) { cap = cap ? cap * 2 : 16; msgs = xrealloc(msgs, cap * sizeof *msgs); }
            check_message((long)n + 1, role, rn, content, cn, &msgs[n]);
            n++;
            if (nf == fcap) { fcap = fcap ? fcap * 2 : 16; frames = xrealloc(frames, fcap * sizeof *frames); }
            frames[nf++] = f;
        }
        if (rc < 0) phi3_die("%s", fr_error(r));
        cap = nf;
    }

    frame_writer w;
    fw_init(&w, 1);
    tok_buf sp = {0};
    pending pend = {0};
    for (size_t i = 0; i < n; i++) {
        add(&sp, role_tags[msgs[i].role]);
        if (msgs[i].n) {                  /* empty content: no frame, nothing to tokenize */
            flush_special(&w, &pend, &sp);
            queue(&w, &pend, msgs[i].s, msgs[i].n, false);
        }
        add(&sp, "<|end|>\n");
    }
    add(&sp, gen ? "<|assistant|>\n" : eos);
    flush_special(&w, &pend, &sp);
    emit(&w, &pend, false);

    tok_buf_free(&pend.text);
    tok_buf_free(&sp);
    fw_destroy(&w);
    if (frames) for (size_t i = 0; i < cap; i++) frame_free(&frames[i]);
    free(frames);
    free(msgs);
    free(eos);
    if (root) json_decref(root);
    if (r) fr_close(r);
    return 0;
}
