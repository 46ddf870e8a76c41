/* gguf.h: the GGUF container (llama.cpp's model file, version 2/3): a validating reader
 * over an mmapped file (untrusted input: every count, length, offset, type and size is
 * checked against the file before use) and a writer that streams tensors to a file. */
#ifndef PHI3_GGUF_H
#define PHI3_GGUF_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>

/* Metadata value types (the file's numbering). */
enum gguf_vtype {
    GGUF_U8 = 0, GGUF_I8 = 1, GGUF_U16 = 2, GGUF_I16 = 3, GGUF_U32 = 4, GGUF_I32 = 5,
    GGUF_F32 = 6, GGUF_BOOL = 7, GGUF_STR = 8, GGUF_ARR = 9, GGUF_U64 = 10, GGUF_I64 = 11,
    GGUF_F64 = 12, GGUF_NVTYPE
};

/* Tensor types (ggml's numbering): the ones this project reads or names in messages. */
enum gguf_ttype {
    GGML_F32 = 0, GGML_F16 = 1, GGML_Q4_0 = 2, GGML_Q4_1 = 3, GGML_Q5_0 = 6, GGML_Q5_1 = 7,
    GGML_Q8_0 = 8, GGML_Q8_1 = 9, GGML_Q2_K = 10, GGML_Q3_K = 11, GGML_Q4_K = 12,
    GGML_Q5_K = 13, GGML_Q6_K = 14, GGML_Q8_K = 15, GGML_I8 = 24, GGML_I16 = 25,
    GGML_I32 = 26, GGML_I64 = 27, GGML_F64 = 28, GGML_BF16 = 30
};

/* Name ("Q4_K", "BF16", "type 99" for unknown ones: static storage per call site is
 * not needed, the unknown form uses a small rotating buffer). */
const char *gguf_type_name(uint32_t type);
/* Elements per block and bytes per block; 0 for types whose layout is not known here. */
uint32_t gguf_type_block(uint32_t type);
uint32_t gguf_type_size(uint32_t type);
/* Bytes of a row of n elements of type, or 0 if n is not a whole number of blocks
 * (or the type is unknown). */
uint64_t gguf_row_bytes(uint32_t type, uint64_t n);

#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32

typedef struct gguf_kv {
    char *key;                 /* malloc'ed, NUL-terminated (keys never hold NUL) */
    uint32_t type;             /* GGUF_* */
    uint32_t arr_type;         /* element type when type == GGUF_ARR */
    uint64_t n;                /* array length (1 for scalars) */
    const uint8_t *val;        /* value bytes in the mapping (after the array header) */
    uint64_t *str_off;         /* string arrays: offset of element i from val (malloc'ed) */
    const uint8_t *raw;        /* the value as encoded (from its type field on) */
    uint64_t raw_len;
} gguf_kv;

typedef struct gguf_tensor {
    char *name;                /* malloc'ed */
    uint32_t type;             /* GGML_* */
    int ndim;
    uint64_t ne[GGUF_MAX_DIMS];/* innermost first: ne[0] = columns of a matrix */
    uint64_t offset;           /* from the start of the data section */
    uint64_t nbytes;
    const void *data;          /* into the mapping */
} gguf_tensor;

typedef struct gguf_file {
    char *path;                /* NULL for gguf_parse on a buffer */
    const uint8_t *map;
    size_t size;
    bool mapped;
    uint32_t version;
    gguf_kv *kv;               /* in file order */
    size_t n_kv;
    gguf_tensor *t;            /* in file order */
    size_t n_t;
    size_t *by_name;           /* indexes of t sorted by name */
    uint64_t alignment;
    uint64_t data_off;         /* start of the data section in the file */
    struct stat id;            /* gguf_open's fstat: the file's identity (fingerprint cache) */
} gguf_file;

/* Parse and validate a whole file held in memory. 0 ok (g refers into buf, which must
 * outlive it); -1 with a one-line cause in err, g left empty. The fuzzed entry point. */
int gguf_parse(const uint8_t *buf, size_t size, gguf_file *g, char *err, size_t errlen);
/* mmap + gguf_parse. 0 ok; -1 with "PATH: cause" in err. */
int gguf_open(const char *path, gguf_file *g, char *err, size_t errlen);
void gguf_close(gguf_file *g);

/* A regular file whose name ends in .gguf or that starts with the GGUF magic (or a
 * missing path ending in .gguf, so that the error names the file): what -m takes as a
 * GGUF model instead of a directory. */
bool gguf_is_path(const char *path);

const gguf_kv *gguf_get(const gguf_file *g, const char *key);
const gguf_tensor *gguf_find(const gguf_file *g, const char *name);

/* Typed getters: 1 found and converted, 0 absent, -1 present but of the wrong type or
 * out of range (err says which key). Integers accept every integer type. */
int gguf_get_int(const gguf_file *g, const char *key, int64_t lo, int64_t hi, int64_t *out,
                 char *err, size_t errlen);
int gguf_get_float(const gguf_file *g, const char *key, double *out, char *err, size_t errlen);
int gguf_get_bool(const gguf_file *g, const char *key, bool *out, char *err, size_t errlen);
int gguf_get_str(const gguf_file *g, const char *key, const char **s, size_t *len,
                 char *err, size_t errlen);
/* Element i of an array kv (no bounds check beyond i < kv->n, which the caller keeps). */
void gguf_arr_str(const gguf_kv *kv, uint64_t i, const char **s, size_t *len);
double gguf_arr_num(const gguf_kv *kv, uint64_t i);      /* numeric element types */
bool gguf_arr_is_num(const gguf_kv *kv);
bool gguf_arr_is_int(const gguf_kv *kv);

/* The phi3 config of a parsed GGUF file (embed/model_gguf.c; model.h's phi3_config).
 * 0 ok; -1 err (the factor arrays may be set either way: model_config_free). */
struct phi3_config;
int model_gguf_config(const gguf_file *g, struct phi3_config *c, char *err, size_t errlen);

/* ---- writer: metadata and tensor infos first, then the tensor data in the same order ---- */

typedef struct gguf_writer gguf_writer;
gguf_writer *gguf_writer_new(void);
void gguf_writer_free(gguf_writer *w);
void gguf_w_str(gguf_writer *w, const char *key, const char *s);
void gguf_w_u32(gguf_writer *w, const char *key, uint32_t v);
void gguf_w_i32(gguf_writer *w, const char *key, int32_t v);
void gguf_w_f32(gguf_writer *w, const char *key, float v);
void gguf_w_bool(gguf_writer *w, const char *key, bool v);
void gguf_w_arr_str(gguf_writer *w, const char *key, const char *const *s, const size_t *len,
                    size_t n);
void gguf_w_arr_f32(gguf_writer *w, const char *key, const float *v, size_t n);
void gguf_w_arr_i32(gguf_writer *w, const char *key, const int32_t *v, size_t n);
/* Copy a pair of a parsed file as it is. */
void gguf_w_raw(gguf_writer *w, const gguf_kv *kv);
/* Add a tensor (ne innermost first); returns its byte size (0: ne[0] not whole blocks). */
uint64_t gguf_w_tensor(gguf_writer *w, const char *name, uint32_t type, int ndim,
                       const uint64_t *ne);
/* Write the header, metadata, tensor infos and the padding before the data. 0 / -1 errno. */
int gguf_w_header(gguf_writer *w, FILE *f);
/* Then each tensor's bytes, in the order added (exactly its size, any number of calls),
 * and gguf_w_pad after each tensor. */
int gguf_w_pad(gguf_writer *w, FILE *f);
uint64_t gguf_w_total(const gguf_writer *w);   /* the file size once complete */

#endif
