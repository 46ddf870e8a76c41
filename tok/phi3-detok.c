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
#include "tok/stopstr.h"
#include "tok/tok_gguf.h"
#include "tok/tokenizer.h"

static const char usage[] =
    "usage: phi3-detok [-m DIR] [options] [FILE] < tokens-frames > text\n"
    "  Decode `tokens` frames (from FILE, or stdin when none or -) to UTF-8 text as they\n"
    "  arrive, never half a character, as Hugging Face tokenizers' decode does.\n"
    "  -m, --model DIR   model directory or GGUF file (default $PHI3_MODEL)\n"
    "  --frames          write `text` frames (special=false) instead of plain text, one\n"
    "                    per input frame that completes some text; `end` frames are\n"
    "                    forwarded after the text they close\n"
    "  --skip-special    drop control tokens (<|end|>, <|assistant|>, ...)\n"
    "  --stop STR        print nothing from STR on until the sequence ends; text that\n"
    "                    could be the start of STR is held back until it is not (repeatable)\n"
    "  --show-stop-token print the control token that ended a reply (a tokens frame\n"
    "                    marked stop: true by phi3-sample); by default it is not printed\n"
    "  --lenient-bytes   an invalid run of byte tokens keeps its valid characters (HF: the\n"
    "                    whole run becomes U+FFFD, one per byte)\n"
    "  An `end` frame ends a sequence: held bytes of an unfinished character are\n"
    "  written as U+FFFD and the next token starts a new sequence (its leading space is\n"
    "  stripped again). Other frame types are ignored.\n";

static void out_text(frame_writer *w, bool frames, tok_buf *b)
{
    if (b->n == 0) return;
    if (frames) {
        /* Within the frame cap: pieces of at most cap - 64 bytes, cut between characters. */
        size_t per = frame_cap() - 64, i = 0;
        while (i < b->n) {
            size_t k = b->n - i <= per ? b->n - i : per;
            if (i + k < b->n)
                while (k > 1 && ((unsigned char)b->p[i + k] & 0xC0) == 0x80) k--;
            fw_text(w, b->p + i, k, false);
            i += k;
        }
    } else if (write_all(1, b->p, b->n) < 0) {
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
    if (gguf_is_path(dir)) {            /* -m FILE.gguf: the rows of its token_embd */
        int n;
        if (tok_gguf_model_vocab(dir, &n, path, sizeof path)) phi3_die("%s", path);
        return n < fallback ? fallback : n;
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *root = tok_json_file(path, true, (size_t)1 << 20);   /* phi3-run's limit (model.c) */
    if (!root) return fallback;
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
    bool frames = false, show_stop = false;
    unsigned flags = 0;
    static stop_filter stops;
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"frames", no_argument, 0, 'f'},
        {"skip-special", no_argument, 0, 's'}, {"lenient-bytes", no_argument, 0, 'L'},
        {"stop", required_argument, 0, 'S'}, {"show-stop-token", no_argument, 0, 'T'},
        {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'}, {0, 0, 0, 0}};
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'm': mdir = optarg; break;
        case 'f': frames = true; break;
        case 's': flags |= TOK_SKIP_SPECIAL; break;
        case 'L': flags |= TOK_LENIENT_BYTES; break;
        case 'S':
            if (stop_add(&stops, optarg)) phi3_die("--stop: '%s' is empty or not UTF-8", optarg);
            break;
        case 'T': show_stop = true; break;
        case 'h': fputs(usage, stdout); return 0;
        case 'V': printf("phi3-detok %s\n", PHI3_VERSION); return 0;
        default: phi3_bad_option(argv, c);
        }
    }
    phi3_input_operand(argc, argv, optind);

    /* Static: what is live when phi3_die exits stays reachable (no LeakSanitizer noise). */
    static tok *t;
    static frame_reader *r;
    static frame f;
    static tok_buf text, shown;
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
            frame_int_iter it;
            int k = frame_ints_iter(&f, "ids", &it, &n, &badi);
            if (k == 0) phi3_die("frame %ld: tokens frame without \"ids\"", f.index);
            if (k < 0) phi3_die("frame %ld: \"ids\" is not an array of integers", f.index);
            bool stop_frame = false;
            if (frame_bool(&f, "stop", &stop_frame) < 0)
                phi3_die("frame %ld: \"stop\" is not a boolean", f.index);
            int64_t id;
            for (size_t i = 0; frame_int_next(&it, &id); i++) {
                if (id >= n_tok && id < n_model) continue;   /* padding row: no text */
                /* The control token that ended a reply is not part of the reply's text. */
                if (stop_frame && !show_stop && id >= 0 && id < n_tok && tok_is_special(t, (int32_t)id))
                    continue;
                if (id < 0 || id >= n_tok || tok_dec_push(&d, (int32_t)id, &text) < 0) {
                    stop_feed(&stops, text.p, text.n, &shown);
                    out_text(&w, frames, &shown);   /* what came before stays written */
                    phi3_die("frame %ld: token id %lld is outside the vocabulary (0..%d)",
                             f.index, (long long)id, n_model - 1);
                }
                if (text.n >= (1 << 20)) {    /* a huge frame: out in pieces, memory flat */
                    stop_feed(&stops, text.p, text.n, &shown);
                    text.n = 0;
                    out_text(&w, frames, &shown);
                }
            }
            stop_feed(&stops, text.p, text.n, &shown);
            text.n = 0;
            out_text(&w, frames, &shown);
        } else if (strcmp(f.type, "end") == 0) {
            tok_dec_end(&d, &text);
            stop_feed(&stops, text.p, text.n, &shown);
            stop_end(&stops, &shown);
            text.n = 0;
            out_text(&w, frames, &shown);
            if (frames) fw_forward_end(&w, &f);
        }
        frame_free(&f);
    }
    if (rc < 0) phi3_die("%s", fr_error(r));
    tok_dec_end(&d, &text);               /* EOF ends the last sequence too */
    stop_feed(&stops, text.p, text.n, &shown);
    stop_end(&stops, &shown);
    out_text(&w, frames, &shown);
    fr_close(r);
    tok_buf_free(&text);
    tok_buf_free(&shown);
    stop_free(&stops);
    fw_destroy(&w);
    tok_free(t);
    return 0;
}
