/* phi3-detok: token id frames -> UTF-8 text on stdout, streamed a token at a time. */
#include <errno.h>
#include <getopt.h>
#include <unistd.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/stream.h"
#include "shared/util.h"
#include "tok/tokenizer.h"

static const char usage[] =
    "usage: phi3-detok [-m DIR] [--frames] [--skip-special] < tokens-frames > text\n"
    "  Decode `tokens` frames to UTF-8 text as they arrive, never half a character.\n"
    "  -m, --model DIR   model directory or GGUF file (default $PHI3_MODEL)\n"
    "  --frames          write `text` frames (special=false) instead of plain text, one\n"
    "                    per input frame that completes some text; `end` frames are\n"
    "                    forwarded after the text they close\n"
    "  --skip-special    drop control tokens (<|end|>, <|assistant|>, ...)\n"
    "  An `end` frame ends a sequence: held bytes of an unfinished character are\n"
    "  written as U+FFFD and the next token starts a new sequence (its leading space is\n"
    "  stripped again). Other frame types are ignored.\n";

static void out_text(frame_writer *w, bool frames, tok_buf *b)
{
    if (b->n == 0) return;
    if (frames) fw_text(w, b->p, b->n, false);
    else if (write_all(1, b->p, b->n) < 0) {
        if (errno == EPIPE) exit(0);     /* reader went away: a normal end */
        phi3_die("stdout: %s", strerror(errno));
    }
    b->n = 0;
}

/* vocab_size from DIR/config.json, or fallback when there is none (a tokenizer-only
 * directory); a config.json that is present but unreadable is an error. */
static int model_vocab_size(const char *dir, int fallback)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (access(path, F_OK) != 0) return fallback;
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) phi3_die("%s: invalid JSON: %s (line %d)", path, je.text, je.line);
    json_t *v = json_object_get(root, "vocab_size");
    json_int_t n = json_is_integer(v) ? json_integer_value(v) : fallback;
    json_decref(root);
    if (n < fallback || n > (1 << 24)) phi3_die("%s: vocab_size %lld is smaller than the tokenizer's %d pieces or absurd",
                                                path, (long long)n, fallback);
    return (int)n;
}

int main(int argc, char **argv)
{
    phi3_init("phi3-detok");
    const char *mdir = NULL;
    bool frames = false;
    unsigned flags = 0;
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"frames", no_argument, 0, 'f'},
        {"skip-special", no_argument, 0, 's'}, {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'}, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "m:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'm': mdir = optarg; break;
        case 'f': frames = true; break;
        case 's': flags |= TOK_SKIP_SPECIAL; break;
        case 'h': fputs(usage, stdout); return 0;
        case 'V': printf("phi3-detok %s\n", PHI3_VERSION); return 0;
        default: fputs(usage, stderr); return 2;
        }
    }
    if (optind < argc) phi3_usage_die("unexpected argument '%s' (input is stdin)", argv[optind]);

    /* Static: what is live when phi3_die exits stays reachable (no LeakSanitizer noise). */
    static tok *t;
    static frame_reader *r;
    static frame f;
    static tok_buf text;
    static int64_t *ids;
    t = tok_load_cli(mdir, &mdir);
    /* The model's embedding may have more rows than the tokenizer has pieces (Phi-3:
     * 32064 against 32011, the rest padding). Those ids have no text: like Hugging Face's
     * decode, they decode to nothing. Ids beyond the model's vocab_size are errors. */
    int n_tok = tok_n_vocab(t), n_model = model_vocab_size(mdir, n_tok);

    frame_writer w;
    fw_init(&w, 1);
    tok_dec d;
    tok_dec_init(&d, t, flags);
    r = fr_open(0, 0);
    int rc;
    while ((rc = fr_next(r, &f)) == 1) {
        if (strcmp(f.type, "tokens") == 0) {
            size_t n, badi;
            int k = frame_ints(&f, "ids", &ids, &n, &badi);
            if (k == 0) phi3_die("frame %ld: tokens frame without \"ids\"", f.index);
            if (k < 0) phi3_die("frame %ld: \"ids\" is not an array of integers", f.index);
            for (size_t i = 0; i < n; i++) {
                if (ids[i] >= n_tok && ids[i] < n_model) continue;   /* padding row: no text */
                if (ids[i] < 0 || ids[i] >= n_tok || tok_dec_push(&d, (int32_t)ids[i], &text) < 0) {
                    out_text(&w, frames, &text);    /* what came before stays written */
                    phi3_die("frame %ld: token id %lld is outside the vocabulary (0..%d)",
                             f.index, (long long)ids[i], n_model - 1);
                }
            }
            free(ids);
            out_text(&w, frames, &text);
        } else if (strcmp(f.type, "end") == 0) {
            tok_dec_end(&d, &text);
            out_text(&w, frames, &text);
            if (frames) fw_forward_end(&w, &f);
        }
        frame_free(&f);
    }
    if (rc < 0) phi3_die("%s", fr_error(r));
    tok_dec_end(&d, &text);               /* EOF ends the last sequence too */
    out_text(&w, frames, &text);
    fr_close(r);
    tok_buf_free(&text);
    fw_destroy(&w);
    tok_free(t);
    return 0;
}
