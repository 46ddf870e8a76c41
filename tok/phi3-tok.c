/* phi3-tok: text frames (or raw stdin) -> token id frames, with the model's tokenizer. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shared/stream.h"
#include "shared/util.h"
#include "tok/tokenizer.h"

#define RAW_MAX ((size_t)256 << 20)   /* --raw input cap: ~64M ids at most */

static const char usage[] =
    "usage: phi3-tok [-m DIR] [--special] [--raw] [--count] [FILE] < text-frames > tokens-frames\n"
    "  Tokenize each `text` frame (from FILE, or stdin when none or -) into one `tokens`\n"
    "  frame with DIR's tokenizer.json (several, all but the last partial, when the ids\n"
    "  would not fit the frame cap).\n"
    "  -m, --model DIR  model directory (default $PHI3_MODEL)\n"
    "  --special        parse control-token strings (<|end|>, <|user|>, ...) in every\n"
    "                   frame, also those with special=false: reproduces transformers'\n"
    "                   apply_chat_template exactly, including its prompt-injection hole\n"
    "  --raw            all of the input is one UTF-8 text (one tokens frame out)\n"
    "  --count          print only the number of tokens of the input, as a decimal line\n"
    "  Without --special only frames with special=true (the template's own parts) can\n"
    "  produce control tokens; in all other text their strings are plain text.\n"
    "  `end` frames pass through and start a new prompt; other frame types are ignored.\n";

static char *read_stdin(size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        if (n == cap) {
            if (cap >= RAW_MAX) phi3_die("stdin: input larger than %zu MiB", RAW_MAX >> 20);
            cap *= 2;
            buf = xrealloc(buf, cap);
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

static void push_id(tok_ids *a, int32_t id)
{
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->v = xrealloc(a->v, a->cap * sizeof *a->v);
    }
    a->v[a->n++] = id;
}

/* The ids of one text as tokens frames within the frame cap: one frame when they fit,
 * else several, every one but the last partial (phi3-run then answers only the last), the
 * last with the text's own partial mark. The reader sees the same context either way. */
static void write_ids(frame_writer *w, const tok_ids *ids, bool partial)
{
    /* A packed id takes at most 5 bytes; 64 bytes cover the map, keys and array header. */
    size_t per = (frame_cap() - 64) / 5, i = 0;
    if (per == 0) per = 1;
    do {
        size_t k = ids->n - i < per ? ids->n - i : per;
        bool last = i + k == ids->n, part = last ? partial : true;
        if (part) {          /* more of this prompt follows: no logits for it yet */
            fw_begin(w, "tokens", 2);
            fw_ints(w, "ids", ids->v + i, k);
            fw_bool(w, "partial", true);
            fw_end_or_exit(w);
        } else {
            fw_tokens(w, ids->v + i, k, -1);
        }
        i += k;
    } while (i < ids->n);
}

/* tok_encode's flush: the ids so far, as partial frames (more of the text follows). */
typedef struct flush_ctx { frame_writer *w; bool count; size_t total; } flush_ctx;

static void flush_ids(tok_ids *ids, void *ctx)
{
    flush_ctx *c = ctx;
    c->total += ids->n;
    if (!c->count) write_ids(c->w, ids, true);
}

int main(int argc, char **argv)
{
    phi3_init("phi3-tok");
    const char *mdir = NULL;
    bool special = false, raw = false, count = false;
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"special", no_argument, 0, 's'},
        {"raw", no_argument, 0, 'r'}, {"count", no_argument, 0, 'c'},
        {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'}, {0, 0, 0, 0}};
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'm': mdir = optarg; break;
        case 's': special = true; break;
        case 'r': raw = true; break;
        case 'c': count = true; break;
        case 'h': fputs(usage, stdout); return 0;
        case 'V': printf("phi3-tok %s\n", PHI3_VERSION); return 0;
        default: phi3_bad_option(argv, c);
        }
    }
    phi3_input_operand(argc, argv, optind);

    /* Static: what is live when phi3_die exits stays reachable (no LeakSanitizer noise). */
    static tok *t;
    static frame_reader *r;
    static frame f;
    static tok_ids ids;
    static char *s;
    t = tok_load_cli(mdir, &mdir);
    int32_t bos = -1;
    if (tok_add_bos(t) && tok_bos_token(t))
        bos = tok_find(t, tok_bos_token(t), strlen(tok_bos_token(t)));

    frame_writer w;
    fw_init(&w, 1);
    long bad;
    static flush_ctx fc;
    fc.w = &w;
    fc.count = count;
    ids.flush = flush_ids;
    ids.ctx = &fc;
    if (raw) {
        size_t n;
        s = read_stdin(&n);
        if (bos >= 0) push_id(&ids, bos);   /* add_bos_token: a whole text starts with BOS */
        if (tok_encode(t, s, n, special ? TOK_SPECIAL : 0, NULL, &ids, &bad) < 0)
            phi3_die("stdin: invalid UTF-8 at byte %ld", bad);
        free(s);
        s = NULL;
        fc.total += ids.n;
        if (!count) write_ids(&w, &ids, false);
    } else {
        r = fr_open(0, 0);
        int rc;
        tok_enc_state st = {false};
        bool at_start = true;             /* next text frame begins a prompt */
        while ((rc = fr_next(r, &f)) == 1) {
            if (strcmp(f.type, "end") == 0) {
                if (!count) fw_forward_end(&w, &f);
                st.skip_ws = false;
                at_start = true;
            } else if (strcmp(f.type, "text") == 0) {
                const char *txt; size_t n;
                bool sp = false;
                if (frame_str(&f, "text", &txt, &n) != 1)
                    phi3_die("frame %ld: text frame without a string \"text\"", f.index);
                if (frame_bool(&f, "special", &sp) < 0)
                    phi3_die("frame %ld: \"special\" is not a boolean", f.index);
                bool partial = false;
                if (frame_bool(&f, "partial", &partial) < 0)
                    phi3_die("frame %ld: \"partial\" is not a boolean", f.index);
                ids.n = 0;
                if (at_start && bos >= 0) push_id(&ids, bos);
                if (tok_encode(t, txt, n, (special || sp) ? TOK_SPECIAL : 0, &st, &ids, &bad) < 0)
                    phi3_die("frame %ld: invalid UTF-8 at byte %ld of the text", f.index, bad);
                fc.total += ids.n;
                if (!count) write_ids(&w, &ids, partial);
                at_start = false;
            }
            frame_free(&f);
        }
        if (rc < 0) phi3_die("%s", fr_error(r));
        fr_close(r);
    }
    if (count) {
        char line[32];
        int k = snprintf(line, sizeof line, "%zu\n", fc.total);
        if (write_all(1, line, (size_t)k) < 0 && errno != EPIPE) phi3_die("stdout: %s", strerror(errno));
    }
    tok_ids_free(&ids);
    fw_destroy(&w);
    tok_free(t);
    return 0;
}
