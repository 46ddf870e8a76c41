/* gen_model.c: write a full-size random-weight Phi-3 model directory for benchmarks:
 * config.json copied from CONFIG, two bf16 safetensors shards + model.safetensors.index.json,
 * the HF tensor names and shapes the config implies. Values are deterministic pseudo-
 * random (xorshift), small (|w| < 0.03) with norm weights near 1, so activations stay
 * finite. usage: gen_model CONFIG OUTDIR */
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct { char name[96]; int64_t rows, cols; int norm; } spec;

static void die(const char *m, const char *x)
{
    fprintf(stderr, "gen_model: %s %s: %s\n", m, x ? x : "", strerror(errno));
    exit(1);
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint16_t next_bf16(int norm)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    /* uniform in [-1, 1) at float precision, scaled; bf16 = top half of the float */
    float u = (float)(int32_t)(rng >> 32) * 0x1p-31f;
    float v = norm ? 1.0f + 0.1f * u : 0.03f * u;
    uint32_t b;
    memcpy(&b, &v, 4);
    return (uint16_t)(b >> 16);
}

static int64_t geti(json_t *c, const char *k)
{
    json_t *v = json_object_get(c, k);
    if (!json_is_integer(v)) { fprintf(stderr, "gen_model: config has no integer %s\n", k); exit(1); }
    return json_integer_value(v);
}

static void write_shard(const char *dir, const char *fname, spec *s, int n, json_t *wmap)
{
    json_t *head = json_object();
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        json_t *t = json_object();
        json_object_set_new(t, "dtype", json_string("BF16"));
        json_object_set_new(t, "shape", s[i].rows ? json_pack("[II]", s[i].rows, s[i].cols)
                                                  : json_pack("[I]", s[i].cols));
        int64_t bytes = (s[i].rows ? s[i].rows : 1) * s[i].cols * 2;
        json_object_set_new(t, "data_offsets", json_pack("[II]", off, off + bytes));
        off += bytes;
        json_object_set_new(head, s[i].name, t);
        json_object_set_new(wmap, s[i].name, json_string(fname));
    }
    char *h = json_dumps(head, JSON_COMPACT);
    size_t hl = strlen(h), pad = (8 - hl % 8) % 8;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, fname);
    FILE *f = fopen(path, "wb");
    if (!f) die("cannot create", path);
    uint64_t len = hl + pad;
    uint8_t le[8];
    for (int i = 0; i < 8; i++) le[i] = (uint8_t)(len >> (8 * i));
    fwrite(le, 1, 8, f);
    fwrite(h, 1, hl, f);
    fwrite("        ", 1, pad, f);
    enum { BUF = 1 << 20 };
    uint16_t *buf = malloc(BUF * sizeof *buf);
    for (int i = 0; i < n; i++) {
        int64_t left = (s[i].rows ? s[i].rows : 1) * s[i].cols;
        while (left > 0) {
            int64_t k = left < BUF ? left : BUF;
            for (int64_t j = 0; j < k; j++) buf[j] = next_bf16(s[i].norm);
            if (fwrite(buf, 2, (size_t)k, f) != (size_t)k) die("write", path);
            left -= k;
        }
    }
    if (fclose(f)) die("write", path);
    free(buf);
    free(h);
    json_decref(head);
}

int main(int argc, char **argv)
{
    if (argc != 3) { fprintf(stderr, "usage: gen_model CONFIG OUTDIR\n"); return 2; }
    json_error_t je;
    json_t *c = json_load_file(argv[1], 0, &je);
    if (!c) { fprintf(stderr, "gen_model: %s: %s\n", argv[1], je.text); return 1; }
    int64_t H = geti(c, "hidden_size"), nh = geti(c, "num_attention_heads"),
            nkv = geti(c, "num_key_value_heads"), L = geti(c, "num_hidden_layers"),
            I = geti(c, "intermediate_size"), V = geti(c, "vocab_size"), hd = H / nh;
    mkdir(argv[2], 0755);
    spec *s = calloc((size_t)(7 * L + 3), sizeof *s);
    int n = 0;
#define ADD(r, k, nm, ...) (snprintf(s[n].name, sizeof s[n].name, nm, __VA_ARGS__), s[n].rows = r, \
                            s[n].cols = k, s[n].norm = !(r), n++)
    ADD(V, H, "%s", "model.embed_tokens.weight");
    for (int64_t l = 0; l < L; l++) {
        ADD(0, H, "model.layers.%lld.input_layernorm.weight", (long long)l);
        ADD((nh + 2 * nkv) * hd, H, "model.layers.%lld.self_attn.qkv_proj.weight", (long long)l);
        ADD(H, nh * hd, "model.layers.%lld.self_attn.o_proj.weight", (long long)l);
        ADD(0, H, "model.layers.%lld.post_attention_layernorm.weight", (long long)l);
        ADD(2 * I, H, "model.layers.%lld.mlp.gate_up_proj.weight", (long long)l);
        ADD(H, I, "model.layers.%lld.mlp.down_proj.weight", (long long)l);
    }
    ADD(0, H, "%s", "model.norm.weight");
    ADD(V, H, "%s", "lm_head.weight");
    json_t *wmap = json_object();
    int half = 1 + 6 * (int)(L / 2);   /* embed + the first half of the layers */
    write_shard(argv[2], "model-00001-of-00002.safetensors", s, half, wmap);
    write_shard(argv[2], "model-00002-of-00002.safetensors", s + half, n - half, wmap);
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", argv[2]);
    json_t *idx = json_pack("{s:{s:I},s:o}", "metadata", "total_size", (json_int_t)0, "weight_map", wmap);
    if (json_dump_file(idx, path, JSON_INDENT(2))) die("write", path);
    snprintf(path, sizeof path, "%s/config.json", argv[2]);
    if (json_dump_file(c, path, JSON_INDENT(2))) die("write", path);
    json_decref(idx);
    json_decref(c);
    free(s);
    return 0;
}
