/* stream.h: phi3 frames over file descriptors. A stream is a concatenation of msgpack
 * maps, each with a "type" string (docs/PROTOCOL.md). The reader is incremental (a frame
 * may arrive in pieces from a pipe) and caps the size of one frame so a hostile length
 * header cannot make us allocate gigabytes. */
#ifndef PHI3_STREAM_H
#define PHI3_STREAM_H
#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Default cap on one frame: a 32064-float logits frame is 128 KiB; a long prompt of
 * 131072 ids is < 1 MiB packed. 64 MiB leaves room for --all-logits of a few hundred
 * positions (one frame each anyway). Override with $PHI3_MAX_FRAME (bytes). */
#define FRAME_MAX_DEFAULT (64u << 20)

/* The cap on one frame that readers enforce: $PHI3_MAX_FRAME (>= 64) or the default.
 * Writers keep their frames within it (splitting or refusing what would not fit). */
size_t frame_cap(void);

/* An array of integers only (of at least 16) is not unpacked into one msgpack_object
 * per element: it has this type, via.bin.size = the element count and via.bin.ptr = the
 * packed elements. Read it with frame_ints / frame_ints_iter. */
#define FRAME_OBJECT_INTS ((msgpack_object_type)0x7f)

typedef struct frame {
    msgpack_object root;     /* always a map with a string "type" */
    msgpack_zone *zone;      /* owns the objects (and the bytes of a small frame) */
    void *own;               /* the bytes of a big frame, NULL for a small one */
    const char *type;        /* NUL-terminated copy of the type string */
    long index;              /* 1-based frame number in the stream */
} frame;

typedef struct frame_reader frame_reader;

/* Reader on fd; max_frame 0 means FRAME_MAX_DEFAULT (or $PHI3_MAX_FRAME). */
frame_reader *fr_open(int fd, size_t max_frame);
void fr_close(frame_reader *r);

/* Next frame. Returns 1 with *out filled (free with frame_free), 0 at a clean end of
 * stream (EOF between frames), -1 on error: fr_error() says what, naming the frame
 * number ("frame 3: truncated frame (EOF after 10 bytes)"). */
int fr_next(frame_reader *r, frame *out);
const char *fr_error(const frame_reader *r);
long fr_count(const frame_reader *r);     /* frames returned so far */
void frame_free(frame *f);

/* Typed accessors. Each returns 1 if the key is present with the right kind, 0 if absent,
 * -1 if present with another kind. */
const msgpack_object *frame_get(const frame *f, const char *key);
int frame_str(const frame *f, const char *key, const char **s, size_t *len);   /* not NUL-terminated */
int frame_int(const frame *f, const char *key, int64_t *v);
int frame_bool(const frame *f, const char *key, bool *v);
int frame_bin(const frame *f, const char *key, const void **p, size_t *len);
/* Array of integers: *out is malloc'ed (caller frees); an element that is not an integer
 * gives -1 with *bad_index set. */
int frame_ints(const frame *f, const char *key, int64_t **out, size_t *n, size_t *bad_index);
/* The same one element at a time, without an array of them all: 1 with *n elements
 * (all integers) to read with frame_int_next, 0 absent, -1 as frame_ints. */
typedef struct frame_int_iter {
    const unsigned char *raw;        /* packed elements, or NULL */
    const msgpack_object *arr;       /* else the unpacked ones */
    size_t i, n;
} frame_int_iter;
int frame_ints_iter(const frame *f, const char *key, frame_int_iter *it, size_t *n,
                    size_t *bad_index);
bool frame_int_next(frame_int_iter *it, int64_t *v);
/* An iterator over the elements of a FRAME_OBJECT_INTS object. */
void obj_ints_iter(const msgpack_object *o, frame_int_iter *it);
/* True if the key names a str equal to s. */
bool obj_str_eq(const msgpack_object *o, const char *s);

/* Writer: frame_begin packs the map header (nkeys + 1 for "type") and the type; the
 * caller packs nkeys key/value pairs with the fw_* helpers or on w->pk directly; then
 * frame_end writes the frame to the fd in one go and clears the buffer. */
typedef struct frame_writer {
    int fd;
    msgpack_sbuffer buf;
    msgpack_packer pk;
} frame_writer;

void fw_init(frame_writer *w, int fd);
void fw_destroy(frame_writer *w);
void fw_begin(frame_writer *w, const char *type, uint32_t nkeys);
void fw_key(frame_writer *w, const char *key);
void fw_str(frame_writer *w, const char *key, const char *s, size_t len);
void fw_int(frame_writer *w, const char *key, int64_t v);
void fw_bool(frame_writer *w, const char *key, bool v);
void fw_bin(frame_writer *w, const char *key, const void *p, size_t len);
void fw_ints(frame_writer *w, const char *key, const int32_t *v, size_t n);
/* 0 ok; -1 write error (errno set; EPIPE = reader gone). */
int fw_end(frame_writer *w);
/* fw_end, then on EPIPE exit(0) quietly, on any other error phi3_die. */
void fw_end_or_exit(frame_writer *w);

/* Common frames, written and flushed at once (exit as fw_end_or_exit). */
void fw_tokens(frame_writer *w, const int32_t *ids, size_t n, int64_t pos /* <0: omit */);
void fw_logits(frame_writer *w, int64_t pos, const float *data, size_t n);
void fw_text(frame_writer *w, const char *s, size_t len, bool special);
void fw_end_frame(frame_writer *w, const char *reason);
/* Write an end frame with the reason of end frame f ("stop" when it has none). */
void fw_forward_end(frame_writer *w, const frame *f);

#endif
