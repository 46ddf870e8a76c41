/* phi3-quantize: a Hugging Face Phi-3 directory (or a GGUF file) in, a GGUF file out,
 * with the metadata, tensor names and vocabulary llama.cpp's converter writes for phi3.
 * Written to a temporary file in the output's directory and renamed at the end. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "embed/gguf.h"
#include "embed/model.h"
#include "embed/quantize_mix.h"
#include "shared/util.h"
#include "tok/tok_gguf.h"

static const char usage[] =
"usage: phi3-quantize [-t TYPE] [-q] SRC OUT.gguf\n"
"\n"
"Writes the Phi-3 model SRC (a Hugging Face directory, or a GGUF file) as the GGUF file\n"
"OUT with the metadata, tensor names and tokenizer llama.cpp's converter writes for phi3.\n"
"\n"
"  -t, --type TYPE   the weights' type: F32, F16, BF16 (default), Q8_0, Q4_0, or Q4_K_M\n"
"                    (llama.cpp's mix: see docs/GGUF.md). Norms and the LongRoPE factors\n"
"                    stay F32. From a GGUF file, -t F32 writes every weight dequantized.\n"
"  -q, --quiet       no progress on stderr\n"
"      --threads N   convert with N threads (default: every core)\n"
"  -h, --help, --version\n"
"\n"
"The file is written as OUT.tmp.XXXXXX next to OUT and renamed when complete; an error\n"
"or a signal (INT, TERM, HUP) removes it. Exit: 0 ok, 1 bad input or write error,\n"
"2 usage error.\n";

/* ---- the temporary file, removed by any exit but success ---- */

static char tmp_path[4096];
static volatile sig_atomic_t tmp_live;

static void on_signal(int sig)
{
    if (tmp_live) unlink(tmp_path);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void drop_tmp(void)
{
    if (tmp_live) unlink(tmp_path);
    tmp_live = 0;
}

/* ---- the tokenizer of a directory (tokenizer.json), as llama.cpp's converter lists it ---- */

typedef struct vocab_out {
    size_t n;
    char **piece;
    size_t *len;
    float *score;
    int32_t *type;
    int64_t bos, eos, unk, pad;
    int add_bos, add_eos;
    char *chat_template;
} vocab_out;

static void vocab_out_free(vocab_out *v)
{
    for (size_t i = 0; v->piece && i < v->n; i++) free(v->piece[i]);
    free(v->piece);
    free(v->len);
    free(v->score);
    free(v->type);
    free(v->chat_template);
}

static void set_piece(vocab_out *v, size_t i, const char *s, size_t n)
{
    free(v->piece[i]);
    v->piece[i] = xmalloc(n + 1);
    memcpy(v->piece[i], s, n);
    v->piece[i][n] = 0;
    v->len[i] = n;
}

static int64_t find_piece(const vocab_out *v, const char *s)
{
    for (size_t i = 0; s && i < v->n; i++)
        if (v->type[i] != TOKT_UNUSED && !strcmp(v->piece[i], s)) return (int64_t)i;
    return -1;
}

static const char *token_str(json_t *o, const char *key)
{
    json_t *t = json_object_get(o, key);
    if (json_is_object(t)) t = json_object_get(t, "content");
    return json_is_string(t) ? json_string_value(t) : NULL;
}

/* 0 ok, 1 no tokenizer.json (nothing written), -1 error (message printed). */
static int vocab_from_dir(const char *dir, int vocab_size, vocab_out *v)
{
    char path[4096];
    size_t len;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    char *text = read_file(path, 256u << 20, &len);
    if (!text) {
        if (errno == ENOENT) return 1;
        phi3_die("%s: %s", path, phi3_strerror(errno));
    }
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    free(text);
    if (!root) phi3_die("%s: line %d: %s", path, je.line, je.text);
    json_t *model = json_object_get(root, "model"), *vj = json_object_get(model, "vocab");
    json_t *mj = json_object_get(model, "merges"), *aj = json_object_get(root, "added_tokens");
    const char *mt = json_string_value(json_object_get(model, "type"));
    if (!mt || strcmp(mt, "BPE") || !json_is_object(vj) || !json_is_array(mj))
        phi3_die("%s: not a BPE tokenizer with vocab and merges", path);
    /* ids run to the model's vocab_size ([PADn] unused tokens fill the gap, as llama.cpp's
     * converter pads them) */
    size_t n = (size_t)vocab_size;
    const char *key;
    json_t *val;
    size_t i;
    json_object_foreach(vj, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) >= (1 << 21))
            phi3_die("%s: bad id of piece \"%.40s\"", path, key);
        if ((size_t)json_integer_value(val) >= n) n = (size_t)json_integer_value(val) + 1;
    }
    json_array_foreach(aj, i, val) {
        json_t *id = json_object_get(val, "id");
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= (1 << 21) ||
            !json_is_string(json_object_get(val, "content")))
            phi3_die("%s: added_tokens[%zu] needs an id and a content", path, i);
        if ((size_t)json_integer_value(id) >= n) n = (size_t)json_integer_value(id) + 1;
    }
    v->n = n;
    v->piece = xcalloc(n, sizeof *v->piece);
    v->len = xcalloc(n, sizeof *v->len);
    v->score = xmalloc(n * sizeof *v->score);
    v->type = xmalloc(n * sizeof *v->type);
    for (i = 0; i < n; i++) {
        char pad[32];
        snprintf(pad, sizeof pad, "[PAD%zu]", i);
        set_piece(v, i, pad, strlen(pad));
        v->score[i] = -10000.0f;
        v->type[i] = TOKT_UNUSED;
    }
    json_object_foreach(vj, key, val) {
        size_t id = (size_t)json_integer_value(val);
        set_piece(v, id, key, strlen(key));
        unsigned b;
        char tail;
        v->type[id] = strlen(key) == 6 && sscanf(key, "<0x%2X%c", &b, &tail) == 2 && tail == '>' ? TOKT_BYTE
                                                                                               : TOKT_NORMAL;
        v->score[id] = 0.0f;
    }
    json_array_foreach(aj, i, val) {
        size_t id = (size_t)json_integer_value(json_object_get(val, "id"));
        json_t *c = json_object_get(val, "content");
        set_piece(v, id, json_string_value(c), json_string_length(c));
        v->type[id] = json_is_true(json_object_get(val, "special")) ? TOKT_CONTROL : TOKT_USER;
        v->score[id] = -1000.0f;
    }
    /* Scores: a normal piece scores minus the rank of the first merge that makes it, so
     * that ordering merges by score gives tokenizer.json's merges back (checked below);
     * pieces no merge makes (single characters) come after every merge. */
    size_t nm = json_array_size(mj);
    for (i = 0; i < n; i++)
        if (v->type[i] == TOKT_NORMAL) v->score[i] = -(float)(nm + i);
    for (size_t r = nm; r-- > 0;) {
        json_t *m = json_array_get(mj, r);
        char cat[2048];
        const char *a, *b;
        size_t an, bn;
        if (json_is_string(m)) {
            const char *s = json_string_value(m), *sp = strchr(s, ' ');
            if (!sp) phi3_die("%s: model.merges[%zu] is not two pieces", path, r);
            a = s, an = (size_t)(sp - s), b = sp + 1, bn = strlen(sp + 1);
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0)), an = json_string_length(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1)), bn = json_string_length(json_array_get(m, 1));
        } else phi3_die("%s: model.merges[%zu] is not a merge", path, r);
        if (an + bn >= sizeof cat) phi3_die("%s: model.merges[%zu] is too long", path, r);
        memcpy(cat, a, an);
        memcpy(cat + an, b, bn);
        cat[an + bn] = 0;
        json_t *id = json_object_get(vj, cat);
        if (!json_is_integer(id)) phi3_die("%s: model.merges[%zu] makes a piece not in the vocab", path, r);
        v->score[json_integer_value(id)] = -(float)r;   /* going down: the first rank wins */
    }
    if (nm + n >= (1u << 24)) phi3_die("%s: too many merges for float32 scores", path);
    int32_t(*mg)[2];
    char err[256];
    long k = tok_spm_merges(n, (const char *const *)v->piece, v->len, v->score, v->type, &mg, err, sizeof err);
    if (k < 0) phi3_die("%s: %s", path, err);
    int same = (size_t)k == nm;
    for (size_t r = 0; same && r < nm; r++) {
        json_t *m = json_array_get(mj, r);
        char want[2048];
        if (json_is_string(m)) snprintf(want, sizeof want, "%s", json_string_value(m));
        else snprintf(want, sizeof want, "%s %s", json_string_value(json_array_get(m, 0)),
                      json_string_value(json_array_get(m, 1)));
        char got[2048];
        snprintf(got, sizeof got, "%s %s", v->piece[mg[r][0]], v->piece[mg[r][1]]);
        same = !strcmp(want, got);
        if (!same) phi3_err("merge %zu: tokenizer.json has \"%s\", the scores give \"%s\"", r, want, got);
    }
    free(mg);
    if (!same)
        phi3_die("%s: the merges are not those of a SentencePiece vocabulary (llama.cpp's 'llama' tokenizer "
                 "cannot express them)", path);
    json_decref(root);

    /* tokenizer_config.json: special tokens, add_bos/add_eos, the chat template */
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    json_t *cfg = json_load_file(path, 0, &je);
    v->bos = v->eos = v->unk = v->pad = -1;
    v->add_bos = 1;
    if (cfg) {
        v->bos = find_piece(v, token_str(cfg, "bos_token"));
        v->eos = find_piece(v, token_str(cfg, "eos_token"));
        v->unk = find_piece(v, token_str(cfg, "unk_token"));
        v->pad = find_piece(v, token_str(cfg, "pad_token"));
        json_t *b = json_object_get(cfg, "add_bos_token"), *e = json_object_get(cfg, "add_eos_token");
        if (json_is_boolean(b)) v->add_bos = json_is_true(b);
        if (json_is_boolean(e)) v->add_eos = json_is_true(e);
        json_t *ct = json_object_get(cfg, "chat_template");
        if (json_is_string(ct)) v->chat_template = xstrdup(json_string_value(ct));
        json_decref(cfg);
    } else if (access(path, F_OK) == 0)
        phi3_die("%s: line %d: %s", path, je.line, je.text);
    return 0;
}

static void write_vocab(gguf_writer *w, const vocab_out *v)
{
    gguf_w_str(w, "tokenizer.ggml.model", "llama");
    gguf_w_str(w, "tokenizer.ggml.pre", "default");
    gguf_w_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->piece, v->len, v->n);
    gguf_w_arr_f32(w, "tokenizer.ggml.scores", v->score, v->n);
    gguf_w_arr_i32(w, "tokenizer.ggml.token_type", v->type, v->n);
    if (v->bos >= 0) gguf_w_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v->bos);
    if (v->eos >= 0) gguf_w_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)v->eos);
    if (v->unk >= 0) gguf_w_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)v->unk);
    if (v->pad >= 0) gguf_w_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)v->pad);
    gguf_w_bool(w, "tokenizer.ggml.add_bos_token", v->add_bos);
    gguf_w_bool(w, "tokenizer.ggml.add_eos_token", v->add_eos);
    if (v->chat_template) gguf_w_str(w, "tokenizer.chat_template", v->chat_template);
}

/* ---- tensors ---- */

typedef struct job {
    char name[96];
    const phi3_weight *w;      /* NULL: a float vector in f */
    const float *f;
    uint64_t ne[2];
    int ndim;
    uint32_t type;
    uint64_t bytes;
} job;

/* A slice of rows [r0, r1) of a tensor, converted by one thread into out. */
typedef struct slice {
    const job *j;
    int64_t r0, r1;
    uint8_t *out;                /* (r1 - r0) rows of the target type */
    float *row;                  /* cols floats of scratch */
    int bad;
} slice;

static void *convert_rows(void *arg)
{
    slice *s = arg;
    const job *j = s->j;
    int64_t cols = (int64_t)j->ne[0];
    uint64_t rb = gguf_row_bytes(j->type, (uint64_t)cols);
    for (int64_t r = s->r0; r < s->r1 && !s->bad; r++) {
        if (!j->w) memcpy(s->row, j->f, (size_t)cols * sizeof *s->row);
        else if (model_weight_row_f32(j->w, r, s->row)) s->bad = 1;
        if (!s->bad && quantize_mix_row(j->type, s->row, s->out + (size_t)(r - s->r0) * rb, cols)) s->bad = 2;
    }
    return NULL;
}

/* Convert and write one tensor, CHUNK rows at a time split over nt threads. */
#define CHUNK_ROWS 64
static void write_tensor(FILE *f, const job *j, int nt, slice *sl, uint8_t *buf)
{
    int64_t rows = j->ndim == 2 ? (int64_t)j->ne[1] : 1;
    uint64_t rb = gguf_row_bytes(j->type, j->ne[0]);
    for (int64_t c0 = 0; c0 < rows; c0 += (int64_t)nt * CHUNK_ROWS) {
        int64_t c1 = c0 + (int64_t)nt * CHUNK_ROWS < rows ? c0 + (int64_t)nt * CHUNK_ROWS : rows;
        pthread_t th[64];
        int started = 0;
        for (int t = 0; t < nt; t++) {
            int64_t a = c0 + (c1 - c0) * t / nt, b = c0 + (c1 - c0) * (t + 1) / nt;
            sl[t].j = j, sl[t].r0 = a, sl[t].r1 = b, sl[t].bad = 0;
            sl[t].out = buf + (size_t)(a - c0) * rb;
            if (t + 1 < nt && b > a && !pthread_create(&th[t], NULL, convert_rows, &sl[t])) started |= 1 << t;
            else if (b > a) convert_rows(&sl[t]);
        }
        for (int t = 0; t < nt; t++)
            if (started & (1 << t)) pthread_join(th[t], NULL);
        for (int t = 0; t < nt; t++)
            if (sl[t].bad)
                phi3_die("%s: cannot %s type %s", j->name, sl[t].bad == 1 ? "read back the source of" : "write",
                         gguf_type_name(sl[t].bad == 1 ? GGML_F32 : j->type));
        size_t n = (size_t)(c1 - c0) * rb;
        if (fwrite(buf, 1, n, f) != n) phi3_die("%s: %s", tmp_path, strerror(errno));
    }
}

int main(int argc, char **argv)
{
    phi3_init("phi3-quantize");
    const char *tname = "BF16";
    int quiet = 0;
    long nt = sysconf(_SC_NPROCESSORS_ONLN);
    static const struct option opts[] = {{"type", required_argument, 0, 't'}, {"quiet", no_argument, 0, 'q'},
                                         {"threads", required_argument, 0, 'T'},
                                         {"help", no_argument, 0, 'h'}, {"version", no_argument, 0, 'V'},
                                         {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "t:qhV", opts, NULL)) != -1) {
        switch (c) {
        case 't': tname = optarg; break;
        case 'q': quiet = 1; break;
        case 'T':
            if (parse_long(optarg, &nt) || nt < 1 || nt > 64) phi3_usage_die("--threads wants 1 to 64, got '%s'", optarg);
            break;
        case 'h': fputs(usage, stdout); return 0;
        case 'V': printf("phi3-quantize %s\n", PHI3_VERSION); return 0;
        default: fputs(usage, stderr); return 2;
        }
    }
    if (argc - optind != 2) phi3_usage_die("expected SRC and OUT.gguf (see --help)");
    const char *src = argv[optind], *out = argv[optind + 1];
    quant_mix mix;
    if (quantize_mix_parse(tname, &mix)) phi3_usage_die("-t %s: unknown type (%s)", tname, quantize_mix_names());

    char err[1024];
    phi3_model *m = model_load(src, err, sizeof err);
    if (!m) phi3_die("%s", err);
    const phi3_config *cf = &m->cfg;

    gguf_writer *w = gguf_writer_new();
    /* general.name: llama.cpp keys Phi-3's tokenizer rules on a name holding "phi3". */
    char name[256];
    const char *base = strrchr(src, '/');
    base = base && base[1] ? base + 1 : src;
    snprintf(name, sizeof name, "%s", base);
    if (strlen(name) > 5 && !strcmp(name + strlen(name) - 5, ".gguf")) name[strlen(name) - 5] = 0;
    char low[256];
    for (size_t i = 0; i <= strlen(name); i++) low[i] = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] + 32 : name[i]);
    if (!strstr(low, "phi3") && !strstr(low, "phi-3")) {
        memmove(name + 5, name, sizeof name - 6);
        memcpy(name, "phi3-", 5);
        name[sizeof name - 1] = 0;
    }
    gguf_w_str(w, "general.architecture", "phi3");
    gguf_w_str(w, "general.name", name);
    gguf_w_u32(w, "general.file_type", mix.file_type);
    if (mix.quantized) gguf_w_u32(w, "general.quantization_version", 2);
    gguf_w_u32(w, "phi3.context_length", (uint32_t)cf->max_pos);
    gguf_w_u32(w, "phi3.rope.scaling.original_context_length", (uint32_t)cf->original_max_pos);
    gguf_w_u32(w, "phi3.embedding_length", (uint32_t)cf->hidden);
    gguf_w_u32(w, "phi3.feed_forward_length", (uint32_t)cf->intermediate);
    gguf_w_u32(w, "phi3.block_count", (uint32_t)cf->n_layers);
    gguf_w_u32(w, "phi3.attention.head_count", (uint32_t)cf->n_heads);
    gguf_w_u32(w, "phi3.attention.head_count_kv", (uint32_t)cf->n_kv_heads);
    gguf_w_f32(w, "phi3.attention.layer_norm_rms_epsilon", cf->rms_eps);
    gguf_w_u32(w, "phi3.rope.dimension_count", (uint32_t)cf->head_dim);
    gguf_w_f32(w, "phi3.rope.freq_base", (float)cf->rope_theta);
    gguf_w_u32(w, "phi3.attention.sliding_window", (uint32_t)cf->sliding_window);
    if (cf->rope_longrope) gguf_w_f32(w, "phi3.rope.scaling.attn_factor", (float)cf->attn_factor);

    /* the vocabulary: tokenizer.json of a directory, the tokenizer.* keys of a GGUF file */
    vocab_out v = {0};
    if (m->gguf) {
        for (size_t i = 0; i < m->gguf->n_kv; i++)
            if (!strncmp(m->gguf->kv[i].key, "tokenizer.", 10)) gguf_w_raw(w, &m->gguf->kv[i]);
    } else if (vocab_from_dir(src, cf->vocab, &v) == 0) {
        if (v.n != (size_t)cf->vocab)
            phi3_die("%s/tokenizer.json: ids up to %zu but vocab_size is %d", src, v.n - 1, cf->vocab);
        write_vocab(w, &v);
    } else
        phi3_err("%s has no tokenizer.json: the file gets no vocabulary (llama.cpp needs one)", src);
    vocab_out_free(&v);

    /* the tensors, in llama.cpp's names: GGUF lists dimensions innermost first */
    int nl = cf->n_layers, nj = 0;
    job *jobs = xcalloc((size_t)(6 * nl + 5), sizeof *jobs);
#define ADD(wp, fp, nm, nd, c0, c1)                                                          \
    do {                                                                                     \
        job *j_ = &jobs[nj++];                                                               \
        snprintf(j_->name, sizeof j_->name, "%s", nm);                                      \
        j_->w = wp, j_->f = fp, j_->ndim = nd, j_->ne[0] = (uint64_t)(c0), j_->ne[1] = (uint64_t)(c1); \
    } while (0)
    ADD(&m->embed, NULL, "token_embd.weight", 2, cf->hidden, cf->vocab);
    if (cf->rope_longrope) {
        ADD(NULL, cf->long_factor, "rope_factors_long.weight", 1, cf->head_dim / 2, 1);
        ADD(NULL, cf->short_factor, "rope_factors_short.weight", 1, cf->head_dim / 2, 1);
    }
    for (int l = 0; l < nl; l++) {
        const phi3_layer *y = &m->layers[l];
        char nm[96];
#define L(field, suffix, nd)                                                                  \
    do {                                                                                     \
        snprintf(nm, sizeof nm, "blk.%d.%s", l, suffix);                                    \
        ADD(&y->field, NULL, nm, nd, y->field.cols, y->field.rows);                          \
    } while (0)
        L(ln1, "attn_norm.weight", 1);
        L(qkv, "attn_qkv.weight", 2);
        L(o, "attn_output.weight", 2);
        L(ln2, "ffn_norm.weight", 1);
        L(gate_up, "ffn_up.weight", 2);
        L(down, "ffn_down.weight", 2);
#undef L
    }
    ADD(&m->norm, NULL, "output_norm.weight", 1, cf->hidden, 1);
    if (!cf->tie_embeddings) ADD(&m->lm_head, NULL, "output.weight", 2, cf->hidden, cf->vocab);
#undef ADD
    uint64_t total = 0, maxcols = 0;
    for (int i = 0; i < nj; i++) {
        job *j = &jobs[i];
        int is_output = !strcmp(j->name, "output.weight") ||
                        (cf->tie_embeddings && !strcmp(j->name, "token_embd.weight"));
        j->type = j->ndim == 1 ? GGML_F32 : quantize_mix_type(&mix, j->name, is_output, nl, j->ne[0]);
        j->bytes = gguf_w_tensor(w, j->name, j->type, j->ndim, j->ne);
        if (!j->bytes) phi3_die("%s: %llu columns do not fit type %s", j->name, (unsigned long long)j->ne[0],
                                gguf_type_name(j->type));
        total += j->bytes;
        if (j->ne[0] > maxcols) maxcols = j->ne[0];
    }

    /* the temporary file next to OUT */
    int n = snprintf(tmp_path, sizeof tmp_path, "%s.tmp.XXXXXX", out);
    if (n < 0 || (size_t)n >= sizeof tmp_path) phi3_die("%s: path too long", out);
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    sigprocmask(SIG_BLOCK, &block, &old);
    int fd = mkstemp(tmp_path);
    if (fd < 0) phi3_die("%s: cannot create a temporary file: %s", out, strerror(errno));
    tmp_live = 1;
    atexit(drop_tmp);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigprocmask(SIG_SETMASK, &old, NULL);
    mode_t um = umask(0);
    umask(um);
    if (fchmod(fd, 0666 & ~um)) phi3_die("%s: %s", tmp_path, strerror(errno));
    FILE *f = fdopen(fd, "wb");
    if (!f) phi3_die("%s: %s", tmp_path, strerror(errno));
    static char fbuf[1 << 20];
    setvbuf(f, fbuf, _IOFBF, sizeof fbuf);
    if (gguf_w_header(w, f)) phi3_die("%s: %s", tmp_path, strerror(errno));

    if (nt < 1) nt = 1;
    if (nt > 64) nt = 64;
    slice *sl = xcalloc((size_t)nt, sizeof *sl);
    for (long t = 0; t < nt; t++) sl[t].row = xmalloc(maxcols * sizeof(float));
    uint8_t *obuf = xmalloc((size_t)nt * CHUNK_ROWS * (maxcols * 4 + 64));
    int tty = isatty(2), last_tenth = -1;
    uint64_t done = 0;
    for (int i = 0; i < nj; i++) {
        job *j = &jobs[i];
        write_tensor(f, j, (int)nt, sl, obuf);
        if (gguf_w_pad(w, f)) phi3_die("%s: %s", tmp_path, strerror(errno));
        done += j->bytes;
        int pct = total ? (int)(done * 100 / total) : 100;
        if (quiet) continue;
        if (tty)
            fprintf(stderr, "\rphi3-quantize: %3d%% [%d/%d] %-28s %-5s\033[K", pct, i + 1, nj, j->name,
                    gguf_type_name(j->type));
        else if (pct / 10 != last_tenth || i + 1 == nj)
            fprintf(stderr, "phi3-quantize: %3d%% [%d/%d] %s %s\n", pct, i + 1, nj, j->name, gguf_type_name(j->type));
        last_tenth = pct / 10;
    }
    if (tty && !quiet) fputc('\n', stderr);
    if (fflush(f) || fsync(fd)) phi3_die("%s: %s", tmp_path, strerror(errno));
    if (fclose(f)) phi3_die("%s: %s", tmp_path, strerror(errno));
    sigprocmask(SIG_BLOCK, &block, &old);
    if (rename(tmp_path, out)) {
        int e = errno;
        phi3_die("%s: cannot rename %s: %s", out, tmp_path, strerror(e));
    }
    tmp_live = 0;
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (!quiet)
        phi3_err("wrote %s: %d tensors, %.1f MiB, weights %s", out, nj, (double)gguf_w_total(w) / 1048576.0, tname);
    for (long t = 0; t < nt; t++) free(sl[t].row);
    free(sl);
    free(obuf);
    free(jobs);
    gguf_writer_free(w);
    model_free(m);
    return 0;
}
