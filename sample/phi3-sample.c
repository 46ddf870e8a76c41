/* phi3-sample: logits frames in, one token id per logits frame out (tokens frames), then
 * an end frame when a stop id or the token limit is reached. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "embed/gguf.h"
#include "sample/sampler.h"
#include "shared/stream.h"
#include "shared/util.h"
#include "tok/stopstr.h"
#include "tok/tokenizer.h"

static const char usage[] =
"usage: phi3-sample [-m DIR] [options] [FILE] < logits-stream > tokens-stream\n"
"\n"
"FILE (or stdin when none or -) is the input stream.\n"
"\n"
"Reads logits frames (and the context tokens frames phi3-run forwards before them) and\n"
"writes one tokens frame with one id per logits frame. On a stop id (that tokens frame\n"
"then says stop: true), a stop string, or after -n tokens it writes that token, then an\n"
"end frame (reason \"stop\" or \"length\"), and exits 0.\n"
"\n"
"The chain, applied in this order (llama.cpp's order):\n"
"  logit-bias -> penalties -> top-k -> typical-p -> top-p -> min-p -> temperature -> draw\n"
"top-k, typical-p, top-p and min-p see probabilities at temperature 1 over the ids the\n"
"previous steps kept. --greedy or -t 0: argmax after logit-bias and penalties.\n"
"\n"
"  -m, --model DIR          stop ids = eos_token_id of DIR/generation_config.json\n"
"                           (default DIR: $PHI3_MODEL; none if the file is absent);\n"
"                           a GGUF file: its eos, eot and <|end|>-like ids\n"
"      --stop-ids IDS       more stop ids, comma separated (e.g. 32007,32000)\n"
"      --ignore-eos         do not stop on the model's eos ids (--stop-ids still apply)\n"
"      --print-stop-ids     print the stop ids in force (eos ids, then --stop-ids), comma\n"
"                           separated on one line, and exit\n"
"      --stop STR           stop when the text generated in this turn (decoded with\n"
"                           DIR's tokenizer) contains STR; needs -m (repeatable)\n"
"  -n, --max-tokens N       stop after N tokens, end reason \"length\" (0: no limit; 0)\n"
"      --greedy             argmax (same as -t 0)\n"
"  -t, --temperature T      T >= 0 (1.0)\n"
"      --top-k K            keep the K most probable ids (0: off; 0)\n"
"      --typical-p P        locally typical sampling, P in (0,1] (1: off; 1)\n"
"      --top-p P            nucleus: smallest set with mass >= P, P in (0,1] (1: off; 1)\n"
"      --min-p P            keep ids with p >= P * p_max, P in [0,1] (0: off; 0)\n"
"      --repeat-penalty R   ids in the window: l>0 ? l/R : l*R, R > 0 (1: off; 1)\n"
"      --presence-penalty A subtract A from ids present in the window (0)\n"
"      --frequency-penalty B subtract B * count from ids in the window (0)\n"
"      --repeat-last-n N    window: the last N context ids, prompt included\n"
"                           (0: no penalties, -1: whole context; 64)\n"
"      --logit-bias ID=V    add V to the logit of ID before anything else; V may be\n"
"                           -inf to ban ID (repeatable)\n"
"      --seed N             seed (0..2^64-1) of the generator: same seed and logits,\n"
"                           same ids on any machine (default: random, see -v)\n"
"  -v, --verbose            settings and speed on stderr\n"
"  -h, --help, --version\n"
"\n"
"Exit: 0 ok; 1 bad input (an invalid option value, a bad stream or config file);\n"
"2 the command line cannot be understood (unknown option, missing argument, operand).\n";

enum {
    OPT_GREEDY = 256, OPT_TOPK, OPT_TOPP, OPT_MINP, OPT_TYPICAL, OPT_REPEAT, OPT_PRESENCE,
    OPT_FREQUENCY, OPT_LASTN, OPT_BIAS, OPT_SEED, OPT_STOP, OPT_IGNORE_EOS, OPT_VERSION, OPT_PRINT_STOP,
    OPT_TOKIDS, OPT_STOPSTR
};

static uint64_t random_seed(void)
{
    uint64_t s;
    if (getrandom(&s, sizeof s, 0) == (ssize_t)sizeof s) return s;
    return (uint64_t)(now_sec() * 1e9) ^ ((uint64_t)getpid() << 32);
}

/* f32 little-endian bytes -> host floats. */
static void load_f32le(float *dst, const unsigned char *src, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(dst, src, n * sizeof(float));
#else
    for (size_t i = 0; i < n; i++, src += 4) {
        uint32_t u = (uint32_t)src[0] | (uint32_t)src[1] << 8 | (uint32_t)src[2] << 16 |
                     (uint32_t)src[3] << 24;
        memcpy(&dst[i], &u, 4);
    }
#endif
}

int main(int argc, char **argv)
{
    phi3_init("phi3-sample");
    sample_params p;
    sample_params_default(&p);
    const char *model = NULL;
    int32_t *stop = NULL, *extra = NULL;
    size_t n_stop = 0, n_extra = 0;
    long max_tokens = 0;
    int ignore_eos = 0, verbose = 0, have_seed = 0, want_tok_ids = 0, print_stop = 0;
    char err[512];
    static stop_filter stops;          /* static: reachable when phi3_die exits */
    static tok *tk;

    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"max-tokens", required_argument, 0, 'n'},
        {"temperature", required_argument, 0, 't'}, {"greedy", no_argument, 0, OPT_GREEDY},
        {"top-k", required_argument, 0, OPT_TOPK}, {"top-p", required_argument, 0, OPT_TOPP},
        {"min-p", required_argument, 0, OPT_MINP},
        {"typical-p", required_argument, 0, OPT_TYPICAL},
        {"repeat-penalty", required_argument, 0, OPT_REPEAT},
        {"presence-penalty", required_argument, 0, OPT_PRESENCE},
        {"frequency-penalty", required_argument, 0, OPT_FREQUENCY},
        {"repeat-last-n", required_argument, 0, OPT_LASTN},
        {"logit-bias", required_argument, 0, OPT_BIAS}, {"seed", required_argument, 0, OPT_SEED},
        {"stop-ids", required_argument, 0, OPT_STOP}, {"stop", required_argument, 0, OPT_STOPSTR},
        {"ignore-eos", no_argument, 0, OPT_IGNORE_EOS},
        {"tokenizer-ids", no_argument, 0, OPT_TOKIDS},
        {"print-stop-ids", no_argument, 0, OPT_PRINT_STOP},
        {"verbose", no_argument, 0, 'v'}, {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, OPT_VERSION}, {0, 0, 0, 0}};
    opterr = 0;
    int c;
    int li = 0;
    while ((c = getopt_long(argc, argv, ":m:n:t:vh", opts, &li)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'n': {
            if (sample_parse_long("--max-tokens", optarg, &max_tokens, err, sizeof err))
                phi3_die("%s", err);
            if (max_tokens < 0) phi3_die("--max-tokens: must be >= 0, got %ld", max_tokens);
            break;
        }
        case 't': case OPT_GREEDY: case OPT_TOPK: case OPT_TOPP: case OPT_MINP: case OPT_TYPICAL:
        case OPT_REPEAT: case OPT_PRESENCE: case OPT_FREQUENCY: case OPT_LASTN: case OPT_BIAS:
        case OPT_SEED: {
            const char *name = c == 't' ? "temperature" : opts[li].name;
            if (sample_set_option(&p, name, optarg, err, sizeof err)) phi3_die("%s", err);
            if (c == OPT_SEED) have_seed = 1;
            break;
        }
        case OPT_STOP: {
            int32_t *ids;
            size_t n;
            if (sample_parse_ids(optarg, &ids, &n, err, sizeof err))
                phi3_die("--stop-ids: %s", err);
            extra = xrealloc(extra, sizeof(int32_t) * (n_extra + n));
            memcpy(extra + n_extra, ids, sizeof(int32_t) * n);
            n_extra += n;
            free(ids);
            break;
        }
        case OPT_STOPSTR:
            if (stop_add(&stops, optarg)) phi3_die("--stop: '%s' is empty or not UTF-8", optarg);
            break;
        case OPT_IGNORE_EOS: ignore_eos = 1; break;
        case OPT_PRINT_STOP: print_stop = 1; break;
        case OPT_TOKIDS: want_tok_ids = 1; break;
        case 'v': verbose = 1; break;
        case 'h': fputs(usage, stdout); return 0;
        case OPT_VERSION: printf("phi3-sample %s\n", PHI3_VERSION); return 0;
        default: phi3_bad_option(argv, c);
        }
    }
    phi3_input_operand(argc, argv, optind);
    const char *bad = sample_params_check(&p);
    if (bad) phi3_die("%s", bad);
    if (!have_seed) p.seed = random_seed();

    model = phi3_model_dir(model);
    struct stat mst;
    if (model && stat(model, &mst) != 0) phi3_die("%s: %s", model, strerror(errno));
    if (model && !S_ISDIR(mst.st_mode) && !gguf_is_path(model)) phi3_die("%s: not a directory", model);
    if (model && !ignore_eos) {
        int found;
        if (sample_model_stop_ids(model, &stop, &n_stop, &found, err, sizeof err))
            phi3_die("%s", err);
        if (!found && verbose) phi3_err("%s has no generation_config.json: no eos stop ids", model);
    }
    if (stops.n) {
        if (!model) phi3_die("--stop needs -m DIR (or $PHI3_MODEL) to decode the text");
        tk = tok_load(model, err, sizeof err);
        if (!tk) phi3_die("%s", err);
    }
    if (want_tok_ids) {
        if (!model) phi3_die("--tokenizer-ids needs -m DIR (or $PHI3_MODEL)");
        if (sample_model_tokenizer_ids(model, &p.id_limit, err, sizeof err)) phi3_die("%s", err);
    }
    stop = xrealloc(stop, sizeof(int32_t) * (n_stop + n_extra + 1));
    if (n_extra) memcpy(stop + n_stop, extra, sizeof(int32_t) * n_extra);
    n_stop += n_extra;
    free(extra);
    if (print_stop) {
        /* the stop ids this sampler would use (the model's eos ids, then --stop-ids), one
         * comma-separated line on stdout, for scripts (the phi3 wrapper) */
        for (size_t i = 0; i < n_stop; i++) printf("%s%d", i ? "," : "", stop[i]);
        printf("\n");
        free(stop);
        return fflush(stdout) ? 1 : 0;
    }
    if (verbose) {
        fprintf(stderr, "phi3-sample: seed %llu, %s, stop ids:", (unsigned long long)p.seed,
                p.greedy || p.temperature == 0 ? "greedy" : "sampling");
        for (size_t i = 0; i < n_stop; i++) fprintf(stderr, "%s%d", i ? "," : " ", stop[i]);
        fprintf(stderr, "%s\n", n_stop ? "" : " none");
    }

    frame_reader *fr = fr_open(0, 0);
    frame_writer w;
    fw_init(&w, 1);
    sampler *s = NULL;
    int n_vocab = 0;
    int32_t *early = NULL;             /* context seen before the first logits frame */
    size_t n_early = 0;
    float *logits = NULL;
    long generated = 0;
    tok_dec dec;                       /* the text of this turn, for --stop */
    static tok_buf piece, scratch;
    if (tk) tok_dec_init(&dec, tk, 0);
    double t_sample = 0, t0 = now_sec();
    frame f;
    int rc;
    while ((rc = fr_next(fr, &f)) > 0) {
        if (!strcmp(f.type, "tokens")) {
            int64_t pos, id;
            size_t n, badi;
            frame_int_iter it;
            int r = frame_ints_iter(&f, "ids", &it, &n, &badi);
            if (r == 0) phi3_die("frame %ld: tokens frame without ids", f.index);
            if (r < 0) phi3_die("frame %ld: tokens ids[%zu] is not an integer", f.index, badi);
            r = frame_int(&f, "pos", &pos);
            if (r < 0) phi3_die("frame %ld: tokens pos is not an integer", f.index);
            /* A pos behind the context means the model rewound: forget the rest. */
            if (s && r > 0 && pos >= 0 && (uint64_t)pos < sample_context_len(s))
                sample_truncate(s, (size_t)pos);
            if (!s && r > 0 && pos >= 0 && (uint64_t)pos < n_early) n_early = (size_t)pos;
            if (!s) early = xrealloc(early, sizeof(int32_t) * (n_early + n + 1));
            /* In pieces: a frame of millions of ids never needs a copy of them all. */
            static int32_t v[65536];
            size_t k = 0;
            for (size_t i = 0; frame_int_next(&it, &id); i++) {
                if (id < INT32_MIN || id > INT32_MAX)
                    phi3_die("frame %ld: tokens ids[%zu] out of range", f.index, i);
                v[k++] = (int32_t)id;
                if (k == sizeof v / sizeof *v || i + 1 == n) {
                    if (s) sample_accept(s, v, k);
                    else {
                        memcpy(early + n_early, v, sizeof(int32_t) * k);
                        n_early += k;
                    }
                    k = 0;
                }
            }
        } else if (!strcmp(f.type, "end")) {
            if (tk) {                          /* a new turn: its own text */
                tok_dec_end(&dec, &piece);
                stop_end(&stops, &scratch);
                piece.n = scratch.n = 0;
            }
        } else if (!strcmp(f.type, "logits")) {
            const void *data;
            size_t len;
            int64_t pos = -1;
            int r = frame_bin(&f, "data", &data, &len);
            if (r == 0) phi3_die("frame %ld: logits frame without data", f.index);
            if (r < 0) phi3_die("frame %ld: logits data is not bin", f.index);
            if (len == 0 || len % 4)
                phi3_die("frame %ld: logits data of %zu bytes is not a float32 vector", f.index, len);
            if (frame_int(&f, "pos", &pos) < 0)
                phi3_die("frame %ld: logits pos is not an integer", f.index);
            size_t n = len / 4;
            if (!s) {
                if (n > INT32_MAX) phi3_die("frame %ld: %zu logits is too many", f.index, n);
                n_vocab = (int)n;
                s = sample_new(&p, n_vocab);
                sample_accept(s, early, n_early);
                free(early);
                early = NULL;
                logits = xmalloc(len);
            } else if (n != (size_t)n_vocab) {
                phi3_die("frame %ld: logits frame has %zu floats, the first one had %d",
                         f.index, n, n_vocab);
            }
            load_f32le(logits, data, n);
            for (size_t i = 0; i < n; i++)   /* +-inf are meaningful (ban, certainty) */
                if (isnan(logits[i])) phi3_die("frame %ld: logits[%zu] is NaN", f.index, i);
            double ts = now_sec();
            int32_t id = sample_next(s, logits);
            t_sample += now_sec() - ts;
            if (id < 0)
                phi3_die("frame %ld: every id is banned (logit -inf, from the frame or --logit-bias)",
                         f.index);
            generated++;
            const char *reason = NULL;
            for (size_t i = 0; i < n_stop; i++)
                if (stop[i] == id) reason = "stop";
            /* The tokens frame (a stop id is marked: phi3-detok hides it) is held until we
             * know whether an end frame follows: then both go out in one write, so the
             * loop's tee and `cat fb` pass them on together. */
            fw_begin(&w, "tokens", (pos >= 0 ? 2 : 1) + (reason ? 1 : 0));
            fw_ints(&w, "ids", &id, 1);
            if (pos >= 0) fw_int(&w, "pos", pos);
            if (reason) fw_bool(&w, "stop", true);
            static msgpack_sbuffer out;
            out.size = 0;
            msgpack_sbuffer_write(&out, w.buf.data, w.buf.size);
            w.buf.size = 0;
            if (tk && !reason) {               /* padding ids have no text: -1, ignored */
                piece.n = 0;
                (void)tok_dec_push(&dec, id, &piece);
                scratch.n = 0;
                if (stop_feed(&stops, piece.p, piece.n, &scratch)) reason = "stop";
            }
            if (!reason && max_tokens > 0 && generated >= max_tokens) reason = "length";
            if (reason) {
                fw_begin(&w, "end", 1);
                fw_str(&w, "reason", reason, strlen(reason));
                msgpack_sbuffer_write(&out, w.buf.data, w.buf.size);
                w.buf.size = 0;
            }
            if (write_all(1, out.data, out.size) != 0) {
                if (errno == EPIPE) exit(0);
                phi3_die("write error: %s", strerror(errno));
            }
            if (reason) {
                msgpack_sbuffer_destroy(&out);
                frame_free(&f);
                break;
            }
        }
        /* end, text, message and unknown frames: nothing to sample from */
        frame_free(&f);
    }
    if (rc < 0) phi3_die("%s", fr_error(fr));
    if (verbose && generated) {
        double dt = now_sec() - t0;
        phi3_err("%ld tokens in %.3f s (%.1f tok/s), sampling %.1f us/token", generated, dt,
                 generated / dt, 1e6 * t_sample / generated);
    }
    if (tk) tok_dec_end(&dec, &piece);
    tok_buf_free(&piece);
    tok_buf_free(&scratch);
    stop_free(&stops);
    tok_free(tk);
    sample_free(s);
    free(logits);
    free(early);
    free(stop);
    sample_params_free(&p);
    fw_destroy(&w);
    fr_close(fr);
    return 0;
}
