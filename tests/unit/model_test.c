/* model_test.c: config.json parsing (the real Phi-3-mini-128k config and variants),
 * safetensors header validation edge cases, dtype conversions, the fingerprint. */
#include "decode/rope.h"
#include "embed/model.h"
#include "shared/util.h"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_no, failed;

static void ok(int cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void ok(int cond, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%sok %d - ", cond ? "" : "not ", ++test_no);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (!cond) failed++;
}

/* Parse text; returns rc, err in e. */
static int cfg(const char *text, phi3_config *c, char *e)
{
    e[0] = 0;                 /* the tests print e: empty after a success */
    return model_config_parse(text, strlen(text), c, e, 256);
}

#define BASE "\"architectures\":[\"Phi3ForCausalLM\"],\"hidden_size\":64,\"num_attention_heads\":4," \
             "\"num_hidden_layers\":1,\"intermediate_size\":32,\"vocab_size\":10,"                  \
             "\"max_position_embeddings\":1024"
#define F8 "[1,1,1,1,1,1,1,1]"

static void config_tests(void)
{
    char e[256] = "";         /* printed by ok() also after a success (then empty) */
    phi3_config c;
    size_t len;
    char *real = read_file("tests/bench/phi3-mini-128k-instruct.config.json", 1 << 20, &len);
    ok(real && model_config_parse(real, len, &c, e, sizeof e) == 0, "real 128k config parses %s", real ? "" : e);
    ok(c.hidden == 3072 && c.n_heads == 32 && c.n_kv_heads == 32 && c.head_dim == 96 && c.n_layers == 32 &&
           c.intermediate == 8192 && c.vocab == 32064,
       "real config: shapes 3072/32/32/96/32/8192/32064");
    ok(c.rope_longrope && c.original_max_pos == 4096 && c.max_pos == 131072 && c.sliding_window == 262144,
       "real config: longrope, original 4096, max 131072, window 262144");
    /* PHI3.md: sqrt(1 + ln 32 / ln 4096) = 1.1902380714 */
    ok(fabs(c.attn_factor - 1.1902380714) < 1e-9, "real config: attention factor %.10f", c.attn_factor);
    ok(c.short_factor[0] == 1.1f && fabsf(c.long_factor[0] - 1.0700000524520874f) < 1e-6f,
       "real config: factor lists read (short %g, long %g)", c.short_factor[0], c.long_factor[0]);
    model_config_free(&c);
    free(real);

    ok(cfg("{" BASE ",\"rope_scaling\":null,\"sliding_window\":null}", &c, e) == 0 && !c.rope_longrope &&
           c.attn_factor == 1.0 && c.sliding_window == 0 && c.n_kv_heads == 4 && c.head_dim == 16 &&
           c.rope_theta == 10000.0,
       "rope_scaling null: plain RoPE, no window, kv heads default to heads %s", e);
    model_config_free(&c);
    ok(cfg("{" BASE ",\"rope_scaling\":{\"type\":\"su\",\"short_factor\":" F8 ",\"long_factor\":" F8
           ",\"original_max_position_embeddings\":256}}", &c, e) == 0 &&
           c.rope_longrope && c.original_max_pos == 256 &&
           fabs(c.attn_factor - sqrt(1 + log(4.0) / log(256.0))) < 1e-12,
       "type su = longrope; original_max inside rope_scaling %s", e);
    model_config_free(&c);
    ok(cfg("{" BASE ",\"original_max_position_embeddings\":1024,\"rope_scaling\":{\"rope_type\":\"longrope\","
           "\"short_factor\":" F8 ",\"long_factor\":" F8 "}}", &c, e) == 0 && c.attn_factor == 1.0,
       "rope_type key; scale <= 1 gives attention factor 1.0 %s", e);
    model_config_free(&c);
    ok(cfg("{" BASE ",\"rope_scaling\":{\"type\":\"yarn\"}}", &c, e) < 0 && strstr(e, "unsupported rope_scaling type yarn"),
       "unknown rope type refused: %s", e);
    ok(cfg("{" BASE ",\"rope_scaling\":{\"type\":\"longrope\",\"short_factor\":[1,1],\"long_factor\":" F8 "}}", &c, e) < 0 &&
           strstr(e, "short_factor"),
       "factor list length checked: %s", e);
    ok(cfg("{\"architectures\":[\"LlamaForCausalLM\"]}", &c, e) < 0 && strstr(e, "unsupported architecture LlamaForCausalLM"),
       "architecture: %s", e);
    ok(cfg("{\"hidden_size\":4}", &c, e) < 0 && strstr(e, "unsupported architecture (none given)"),
       "no architectures: %s", e);
    ok(cfg("{" BASE ",\"num_key_value_heads\":3}", &c, e) < 0 && strstr(e, "multiple"), "kv heads must divide heads: %s", e);
    ok(cfg("{" BASE ",\"partial_rotary_factor\":0.75}", &c, e) < 0 && strstr(e, "partial_rotary_factor"),
       "partial rotary (Phi-4-mini) refused: %s", e);
    ok(cfg("{" BASE ",\"vocab_size\":-1}", &c, e) < 0 && strstr(e, "vocab_size"), "negative vocab: %s", e);
    ok(cfg("{" BASE ",\"hidden_size\":99999999999}", &c, e) < 0, "absurd hidden_size: %s", e);
    ok(cfg("{" BASE ",\"tie_word_embeddings\":true}", &c, e) == 0 && c.tie_embeddings, "tie_word_embeddings");
    model_config_free(&c);
    ok(cfg("[1]", &c, e) < 0 && cfg("{" BASE ",\"hidden_size\":64", &c, e) < 0 && strstr(e, "invalid JSON"),
       "not an object / bad JSON: %s", e);

    /* Ranges: finite as float32 too (1e300 was accepted as a double, then inf/NaN logits). */
    static const struct { const char *json, *want; } bad[] = {
        {",\"rms_norm_eps\":1e300", "rms_norm_eps must be a number in (0, 1)"},
        {",\"rms_norm_eps\":1e-50", "rms_norm_eps"},          /* 0 as float32 */
        {",\"rms_norm_eps\":0", "rms_norm_eps"},
        {",\"rms_norm_eps\":1", "rms_norm_eps"},
        {",\"rms_norm_eps\":-1e-5", "rms_norm_eps"},
        {",\"rms_norm_eps\":\"1e-5\"", "rms_norm_eps"},
        {",\"rope_theta\":1e39", "rope_theta"},                /* inf as float32 */
        {",\"rope_theta\":0", "rope_theta"},
        {",\"rope_theta\":-10000", "rope_theta"},
        {",\"rope_scaling\":{\"type\":\"longrope\",\"short_factor\":" F8 ",\"long_factor\":" F8
         ",\"original_max_position_embeddings\":256,\"attention_factor\":1e300}", "attention_factor"},
        {",\"rope_scaling\":{\"type\":\"longrope\",\"short_factor\":" F8 ",\"long_factor\":" F8
         ",\"original_max_position_embeddings\":256,\"attention_factor\":0}", "attention_factor"},
        {",\"rope_scaling\":{\"type\":\"longrope\",\"short_factor\":[1,1,1,1,1,1,1,1e300],\"long_factor\":" F8
         ",\"original_max_position_embeddings\":256}", "short_factor[7] must be a number in (0, 1e+06)"},
        {",\"rope_scaling\":{\"type\":\"longrope\",\"short_factor\":" F8 ",\"long_factor\":[1e-50,1,1,1,1,1,1,1]"
         ",\"original_max_position_embeddings\":256}", "long_factor[0]"},
        {",\"rope_scaling\":{\"type\":\"longrope\",\"short_factor\":" F8 ",\"long_factor\":" F8
         ",\"original_max_position_embeddings\":2048}", "original_max_position_embeddings 2048 exceeds max_position_embeddings 1024"},
        {",\"num_key_value_heads\":0", "num_key_value_heads"},
        {",\"sliding_window\":-1", "sliding_window"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char text[1024];
        snprintf(text, sizeof text, "{" BASE "%s}", bad[i].json);
        int rc = cfg(text, &c, e);
        ok(rc < 0 && strstr(e, bad[i].want), "refused: %s -> %s", bad[i].json, rc < 0 ? e : "accepted");
        if (!rc) model_config_free(&c);
    }
    e[0] = 0;
    ok(cfg("{" BASE ",\"rms_norm_eps\":1e-40,\"rope_theta\":1e29}", &c, e) == 0, "tiny eps (a float32 subnormal), big theta: %s", e);
    model_config_free(&c);
}

/* A safetensors image from a header string and n data bytes (header padded to 8). */
static uint8_t *st_image(const char *hdr, size_t ndata, size_t *size)
{
    size_t h = strlen(hdr), pad = (8 - h % 8) % 8;
    *size = 8 + h + pad + ndata;
    uint8_t *b = calloc(1, *size);
    uint64_t L = h + pad;
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(L >> (8 * i));
    memcpy(b + 8, hdr, h);
    memset(b + 8 + h, ' ', pad);
    return b;
}

static int st_try(const char *hdr, size_t ndata, char *e)
{
    size_t size;
    uint8_t *b = st_image(hdr, ndata, &size);
    st_tensor *t;
    int n, rc = st_parse(b, size, &t, &n, e, 256);
    if (!rc) st_tensors_free(t, n);
    free(b);
    return rc;
}

static void safetensors_tests(void)
{
    char e[256];
    ok(st_try("{\"a\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,8]}}", 8, e) == 0, "valid file");
    ok(st_try("{\"a\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,8]}}", 7, e) < 0 &&
           strstr(e, "beyond the data section"), "range past the end: %s", e);
    ok(st_try("{\"a\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,8]}}", 8, e) < 0 &&
           strstr(e, "tensor a: 8 bytes but shape x BF16 needs 12"), "shape x dtype != bytes: %s", e);
    ok(st_try("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
              "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, e) < 0 && strstr(e, "overlap"),
       "overlap: %s", e);
    ok(st_try("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}", 8, e) < 0 && strstr(e, "aligned"),
       "misaligned data: %s", e);
    ok(st_try("{\"a\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,1]}}", 8, e) < 0 && strstr(e, "unknown dtype"),
       "unknown dtype: %s", e);
    ok(st_try("{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,0]}}", 8, e) < 0 &&
           strstr(e, "too large"), "shape overflow: %s", e);
    ok(st_try("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, e) < 0, "end < begin: %s", e);
    ok(st_try("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],"
              "\"data_offsets\":[4,8]}}", 8, e) < 0, "duplicate names: %s", e);
    uint8_t small[12] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    st_tensor *t;
    int n;
    ok(st_parse(small, sizeof small, &t, &n, e, sizeof e) < 0 && strstr(e, "bad header length"), "huge header length: %s", e);
    ok(st_parse(small, 4, &t, &n, e, sizeof e) < 0 && strstr(e, "too short"), "4-byte file: %s", e);

    size_t size;
    uint8_t *b = st_image("{\"w\":{\"dtype\":\"BF16\",\"shape\":[2,4],\"data_offsets\":[0,16]}}", 16, &size);
    st_file f = {0};
    ok(st_parse(b, size, &f.t, &f.n, e, sizeof e) == 0, "parse for fetch");
    int64_t good[2] = {2, 4}, bad[2] = {4, 2}, any[2] = {-1, 4};
    ok(st_fetch(&f, "w", ST_FLOAT_WEIGHTS, 2, good, e, sizeof e) != NULL, "fetch with the right shape");
    ok(st_fetch(&f, "w", ST_FLOAT_WEIGHTS, 2, any, e, sizeof e) != NULL, "fetch with a wildcard dim");
    ok(!st_fetch(&f, "w", ST_FLOAT_WEIGHTS, 2, bad, e, sizeof e) &&
           !strcmp(e, "tensor w: expected F32|F16|BF16 [4, 2], got BF16 [2, 4]"), "wrong shape: %s", e);
    ok(!st_fetch(&f, "w", ST_MASK(ST_F32), 2, good, e, sizeof e) && !strcmp(e, "tensor w: expected F32 [2, 4], got BF16 [2, 4]"),
       "wrong dtype: %s", e);
    ok(!st_fetch(&f, "v", ST_FLOAT_WEIGHTS, 2, good, e, sizeof e) && !strcmp(e, "tensor v: missing"), "missing: %s", e);
    st_tensors_free(f.t, f.n);
    free(b);
}

static void conversion_tests(void)
{
    ok(bf16_to_f32(0x3f80) == 1.0f && bf16_to_f32(0xc040) == -3.0f, "bf16 1.0, -3.0");
    ok(f16_to_f32(0x3c00) == 1.0f && f16_to_f32(0xc000) == -2.0f && f16_to_f32(0x7bff) == 65504.0f,
       "f16 normals (1, -2, 65504)");
    ok(f16_to_f32(0x0001) == 0x1p-24f && f16_to_f32(0x8200) == -0x1p-15f, "f16 subnormals");
    ok(isinf(f16_to_f32(0x7c00)) && isnan(f16_to_f32(0x7e00)) && f16_to_f32(0x8000) == 0.0f, "f16 inf, nan, -0");
}

static void model_tests(void)
{
    char e[512];
    phi3_model *a = model_load("tests/fixtures/tiny-longrope", e, sizeof e),
               *b = model_load("tests/fixtures/tiny-gqa-window", e, sizeof e),
               *a2 = model_load("tests/fixtures/tiny-longrope", e, sizeof e);
    ok(a && b && a2, "fixtures load");
    if (!a || !b || !a2) return;
    ok(a->n_shards == 2 && b->n_shards == 1, "shards: 2 (index) and 1");
    ok(a->fingerprint == a2->fingerprint && a->fingerprint != b->fingerprint && strlen(a->fingerprint_hex) == 16,
       "fingerprint stable across loads, differs between models (%s, %s)", a->fingerprint_hex, b->fingerprint_hex);
    ok(a->weight_bytes == 25806720, "weight bytes = index total_size (%zu)", a->weight_bytes);
    int64_t shape[2] = {576, 192};
    ok(model_fetch(a, "model.layers.1.self_attn.qkv_proj.weight", ST_MASK(ST_BF16), 2, shape, e, sizeof e) != NULL,
       "model_fetch across shards");
    ok(a->layers[1].qkv.rows == 576 && a->layers[1].qkv.cols == 192 && a->layers[0].ln1.rows == 1 &&
           a->lm_head.rows == 32064,
       "typed per-layer weights bound with their shapes");
    float inv[48];
    rope_inv_freq(&a->cfg, 1, inv);
    ok(fabsf(inv[0] - 1.0f / a->cfg.long_factor[0]) < 1e-7f, "long inv_freq[0] = 1/long_factor[0]");
    ok(rope_use_long(&a->cfg, 64) == 0 && rope_use_long(&a->cfg, 65) == 1 && rope_use_long(&b->cfg, 1 << 20) == 0,
       "long factors only past original_max (64), never without longrope");
    model_free(a);
    model_free(a2);
    model_free(b);
}

/* The content hash behind the fingerprint: any single changed byte (at block edges, in
 * the tail, in the middle) changes it; thread count does not; length matters. */
static void hash_tests(void)
{
    size_t n = ((size_t)64 << 20) + 12293;     /* a full 64 MiB block and a short one */
    uint8_t *b = xmalloc(n + 8);
    for (size_t i = 0; i < n + 8; i++) b[i] = (uint8_t)(i * 2654435761u >> 13);
    uint64_t h = fp_hash(b, n, 1);
    ok(fp_hash(b, n, 4) == h && fp_hash(b, n, 2) == h, "hash independent of threads");
    size_t at[] = {0, 7, 8, 31, 32, (64u << 20) - 1, 64u << 20, n / 2 + 3, n - 9, n - 1};
    int all = 1;
    for (size_t k = 0; k < sizeof at / sizeof *at; k++)
        for (int bit = 0; bit < 8; bit += 7) {
            b[at[k]] ^= (uint8_t)(1 << bit);
            all &= fp_hash(b, n, 2) != h;
            b[at[k]] ^= (uint8_t)(1 << bit);
        }
    ok(all, "a flipped bit anywhere changes the hash");
    ok(fp_hash(b, n + 1, 2) != h && fp_hash(b, n - 1, 2) != h, "the length is hashed");
    uint8_t z[64] = {0};
    ok(fp_hash_block(z, 8, 0) != fp_hash_block(z, 16, 0) && fp_hash_block(z, 64, 0) != fp_hash_block(z, 64, 1),
       "zero words of other lengths or seeds differ");
    free(b);
}

int main(void)
{
    phi3_init("model_test");
    hash_tests();
    config_tests();
    safetensors_tests();
    conversion_tests();
    model_tests();
    printf("1..%d\n", test_no);
    return failed ? 1 : 0;
}
