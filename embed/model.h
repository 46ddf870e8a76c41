/* model.h: the one model loader of every backend: a Hugging Face Phi-3 directory
 * (config.json + model.safetensors, or shards + model.safetensors.index.json), its
 * config, and its tensors, mmapped read-only and validated, fetched by name with the
 * dtype and shape the caller expects. */
#ifndef PHI3_MODEL_H
#define PHI3_MODEL_H
#include <stddef.h>
#include <stdint.h>

/* ---- safetensors (embed/safetensors.c) ---- */

typedef enum st_dtype {
    ST_F32, ST_F16, ST_BF16, ST_F64,
    ST_I8, ST_I16, ST_I32, ST_I64,
    ST_U8, ST_U16, ST_U32, ST_U64,
    ST_BOOL, ST_F8_E4M3, ST_F8_E5M2,
    /* ggml block types (GGUF files only; embed/quant.h): no per-element size */
    ST_Q8_0, ST_Q4_0, ST_Q4_K, ST_Q5_K, ST_Q6_K,
    ST_NDTYPE
} st_dtype;
/* The dtypes a safetensors header may name: those before the block types. */
#define ST_N_SAFETENSORS ST_Q8_0

/* Bit masks of accepted dtypes for model_fetch / st_fetch. */
#define ST_MASK(d) (1u << (d))
#define ST_FLOAT_WEIGHTS (ST_MASK(ST_F32) | ST_MASK(ST_F16) | ST_MASK(ST_BF16))

size_t st_dtype_size(st_dtype d);          /* bytes per element; 0 for block types
                                              (quant_row_bytes sizes any row) */
const char *st_dtype_name(st_dtype d);     /* "BF16", as in the file; "Q4_K" */

#define ST_MAX_DIMS 8
typedef struct st_tensor {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t offset;                         /* from the start of the data section */
    size_t nbytes;                         /* = prod(shape) * dtype size, checked */
    const void *data;                      /* into the file's mapping */
} st_tensor;

#include <sys/stat.h>
typedef struct st_file {
    char *path;
    void *map;                             /* mmap of the whole file (read-only) */
    size_t size;
    struct stat id;                        /* fstat at open: the file's identity */
    st_tensor *t;                          /* sorted by name */
    int n;
} st_file;

/* Parse and validate a whole safetensors file held in memory (buf, size): header length
 * sane and inside the file, header JSON valid, known dtypes, every data_offsets range
 * inside the data section, shape x dtype size = byte length, no two tensors overlapping.
 * On success *out (malloc'ed, sorted by name; data pointers into buf) and *n; free with
 * st_tensors_free. 0 ok; -1 with a message in err. This is the fuzzed entry point. */
int st_parse(const uint8_t *buf, size_t size, st_tensor **out, int *n,
             char *err, size_t errlen);
void st_tensors_free(st_tensor *t, int n);

/* mmap + st_parse one file. 0 ok; -1 with "PATH: cause" in err. */
int st_open(const char *path, st_file *f, char *err, size_t errlen);
void st_close(st_file *f);
const st_tensor *st_find(const st_file *f, const char *name);   /* NULL if absent */

/* Find name in f and check it: dtype in dtype_mask, ndim dims equal to shape (a shape
 * entry < 0 matches any size). NULL with "tensor NAME: expected BF16|F16|F32 [576, 192],
 * got BF16 [575, 192]" (or "tensor NAME: missing") in err. */
const st_tensor *st_fetch(const st_file *f, const char *name, unsigned dtype_mask,
                          int ndim, const int64_t *shape, char *err, size_t errlen);
/* The same check on a tensor already looked up (t NULL: "tensor NAME: missing"). */
const st_tensor *st_check(const st_tensor *t, const char *name, unsigned dtype_mask,
                          int ndim, const int64_t *shape, char *err, size_t errlen);

/* ---- SIGBUS guard (embed/mapguard.c) ---- */

/* A read fault (SIGBUS: the file shrank under the mapping) inside [addr, addr + len)
 * prints "PROG: PATH changed under the mmap (truncated?)" and exits 1. st_open and the
 * session objects register their mappings; remove before munmap (or after mremap, then
 * add the new range). */
void mapguard_add(const void *addr, size_t len, const char *path);
void mapguard_remove(const void *addr);
/* Open path without blocking (a FIFO must not hang the open), refuse anything but a
 * regular file of at least min bytes, mmap it whole read-only and guard it. 0 ok (*map,
 * *size, *st: the fstat, the file's identity); -1 with "PATH: cause" in err, "PATH: file
 * too short for WHAT (N bytes)" under min. mapguard_close(*map, *size) undoes it. */
int mapguard_open(const char *path, size_t min, const char *what, void **map, size_t *size, struct stat *st,
                  char *err, size_t errlen);
void mapguard_close(const void *map, size_t size);

/* ---- full-content hash (embed/fingerprint.c) ---- */

/* 64-bit hash of data (not cryptographic: a change of any one 8-byte word always changes
 * it); the same for any threads >= 1. */
uint64_t fp_hash(const void *data, size_t size, int threads);
uint64_t fp_hash_block(const void *data, size_t n, uint64_t seed);
/* fp_hash of a whole mapped file, cached by its identity (see fingerprint.c); *cached
 * (may be NULL) says whether the cache answered. */
uint64_t st_file_hash(const st_file *f, int *cached);
/* The same for any mapped file (a GGUF file): path, its whole mapping, and the fstat taken
 * when it was opened (the cache key; stored only if the file still has that identity). */
uint64_t fp_file_hash(const char *path, const void *map, size_t size, const struct stat *id, int *cached);

/* ---- the model (embed/model.c) ---- */

typedef struct phi3_config {
    int hidden;                /* hidden_size (3072) */
    int n_heads;               /* num_attention_heads (32) */
    int n_kv_heads;            /* num_key_value_heads (32; GQA when fewer) */
    int head_dim;              /* hidden / n_heads (96); even */
    int n_layers;              /* num_hidden_layers (32) */
    int intermediate;          /* intermediate_size (8192) */
    int vocab;                 /* vocab_size (32064) */
    float rms_eps;             /* rms_norm_eps */
    double rope_theta;         /* rope_theta (10000) */
    int rope_longrope;         /* rope_scaling type longrope/su; 0: plain RoPE */
    float *short_factor;       /* [head_dim/2], NULL without longrope */
    float *long_factor;        /* [head_dim/2], NULL without longrope */
    double attn_factor;        /* multiplies cos and sin; 1.0 unless longrope and
                                  max_pos > original_max (or rope_scaling.attention_factor) */
    int original_max_pos;      /* original_max_position_embeddings (4096); short factors
                                  while the sequence is <= this; = max_pos without longrope */
    int max_pos;               /* max_position_embeddings (131072) */
    int sliding_window;        /* W: query q sees keys q-W+1..q; 0 = no window */
    int tie_embeddings;        /* tie_word_embeddings: lm_head is embed_tokens */
} phi3_config;

/* A weight tensor in its file dtype (BF16, F16 or F32), row-major [rows, cols];
 * vectors have rows = 1. data points into the mmapped shard (a backend that uploads
 * the weights may copy these structs and swap data for its own pointer). */
typedef struct phi3_weight {
    const void *data;
    st_dtype dtype;
    int64_t rows, cols;
} phi3_weight;

typedef struct phi3_layer {
    phi3_weight ln1;           /* input_layernorm.weight            [hidden] */
    phi3_weight qkv;           /* self_attn.qkv_proj.weight         [(nh + 2 nkv) hd, hidden]
                                  rows: Q (nh hd), then K (nkv hd), then V (nkv hd) */
    phi3_weight o;             /* self_attn.o_proj.weight           [hidden, nh hd] */
    phi3_weight ln2;           /* post_attention_layernorm.weight   [hidden] */
    phi3_weight gate_up;       /* mlp.gate_up_proj.weight           [2 inter, hidden]
                                  rows: gate (inter), then up (inter) */
    phi3_weight down;          /* mlp.down_proj.weight              [hidden, inter] */
} phi3_layer;

typedef struct phi3_model {
    phi3_config cfg;
    phi3_weight embed;         /* model.embed_tokens.weight [vocab, hidden] */
    phi3_weight norm;          /* model.norm.weight         [hidden] */
    phi3_weight lm_head;       /* lm_head.weight            [vocab, hidden] (= embed if tied) */
    phi3_layer *layers;        /* [n_layers] */
    st_file *shards;           /* [n_shards], mmapped */
    int n_shards;
    size_t weight_bytes;       /* bytes of the tensors the forward pass reads */
    size_t file_bytes;         /* total size of the shard files */
    uint64_t fingerprint;      /* config + tensor layout + a full hash of every shard */
    char fingerprint_hex[17];  /* the same as 16 hex digits */
    char *dir;                 /* the directory, or the GGUF file's path */
    struct gguf_file *gguf;    /* the GGUF file (embed/gguf.h), NULL for a directory */
} phi3_model;

/* Load DIR: parse config.json (architectures must hold Phi3ForCausalLM), open and validate
 * every shard, bind every tensor with its expected dtype and shape. NULL with one line in
 * err ("DIR/config.json: ...", "tensor NAME: expected ..., got ...", "unsupported
 * architecture ...") on any problem; nothing is left mapped. */
phi3_model *model_load(const char *dir, char *err, size_t errlen);
void model_free(phi3_model *m);
/* Map the pages of the model's files into this process now (MADV_POPULATE_READ), reading
 * what the page cache lacks, as llama.cpp's MAP_POPULATE does: the CPU backend's first
 * forward then does not stop on hundreds of thousands of page faults. All but the
 * embedding table (read a row per token; unless tied to the LM head). Best effort (older
 * kernels: nothing happens). */
void model_populate(const phi3_model *m);
/* The same from one GGUF file (embed/model_gguf.c): model_load takes this path when DIR
 * is a GGUF file (gguf_is_path). */
phi3_model *model_load_gguf(const char *path, char *err, size_t errlen);
/* Row r of a weight as float32 (every dtype a weight can have). 0 ok, -1 unknown dtype. */
int model_weight_row_f32(const phi3_weight *w, int64_t r, float *dst);
/* st_dtype of a GGUF tensor type this loader binds; -1 for others. */
int model_gguf_dtype(uint32_t ggml_type, st_dtype *d);

/* ---- shared by the two loaders (model.c, model_gguf.c) ---- */

/* A checkpoint's weight names: per layer "LAYER<l>.SUFFIX" (layer "blk.", ln1
 * "attn_norm.weight" -> "blk.0.attn_norm.weight"). */
typedef struct model_names {
    const char *embed, *norm, *lm_head, *layer;
    const char *ln1, *qkv, *o, *ln2, *gate_up, *down;      /* suffixes */
} model_names;
/* Bind one weight of rows x cols (rows 0: a vector of cols) found under name; 0 ok, -1
 * with the cause in the loader's err. */
typedef int (*model_bind_fn)(void *ctx, phi3_weight *w, const char *name, int64_t rows, int64_t cols);
/* Bind every weight of m (m->cfg set) with the shape the forward pass expects: embed,
 * the layers (allocated here), norm, lm_head (embed when tied). Stops at the first -1. */
int model_bind_all(phi3_model *m, const model_names *names, model_bind_fn bind, void *ctx);
/* FNV-1a over n bytes, continuing from h. */
uint64_t model_fnv(uint64_t h, const void *p, size_t n);
/* FNV-1a of tag and the config values that change the computation (the start of a
 * model's fingerprint). */
uint64_t model_config_hash(const phi3_config *c, const char *tag);

/* Config only (no tensors): parse a config.json text. 0 ok; -1 with err. The factor
 * arrays are malloc'ed (free with model_config_free). */
int model_config_parse(const char *json, size_t len, phi3_config *c, char *err, size_t errlen);
void model_config_free(phi3_config *c);

/* Look up any tensor of the model (across shards) with dtype/shape checks as st_fetch. */
const st_tensor *model_fetch(const phi3_model *m, const char *name, unsigned dtype_mask,
                             int ndim, const int64_t *shape, char *err, size_t errlen);

/* Convert n elements of a BF16/F16/F32 array to float32. */
void model_to_f32(st_dtype d, const void *src, float *dst, size_t n);
float bf16_to_f32(uint16_t h);
float f16_to_f32(uint16_t h);

#endif
