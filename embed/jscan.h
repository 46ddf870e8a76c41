/* jscan.h: a small pull scanner for JSON text (RFC 8259), for the model files whose size
 * an attacker picks (a safetensors header up to 100 MB, the shard index): it builds no
 * tree, so a header costs the few structures the loader keeps, not 30-70x its size as a
 * jansson tree did. Strings are checked as jansson checks them (valid UTF-8, no NUL, no
 * raw control characters, paired surrogates); integers fit int64. */
#ifndef PHI3_JSCAN_H
#define PHI3_JSCAN_H
#include <stddef.h>
#include <stdint.h>

typedef struct jscan {
    const char *start, *p, *end;
    char why[96];                       /* the first error */
} jscan;

void js_init(jscan *j, const char *buf, size_t len);
/* The next value's first character after whitespace ('{', '[', '"', 't', 'f', 'n', or
 * '-'/'0'..'9' for a number), or 0 at the end. */
int js_peek(jscan *j);
/* Consume c after whitespace. 0 ok; -1 (why set). */
int js_lit(jscan *j, char c);
/* After a member or element: 1 if a ',' followed (another one comes), 0 if close came
 * (consumed), -1 on anything else. */
int js_next(jscan *j, char close);
/* A string: decoded into out (room for at least the raw length + 1; NUL-terminated) with
 * its length in *len; out NULL only checks and skips it. *raw (may be NULL) gets the
 * raw length between the quotes. 0 ok; -1. */
int js_string(jscan *j, char *out, size_t *len, size_t *raw);
/* A number: *is_int 1 and *v set when it is an integer that fits int64. 0 ok; -1. */
int js_number(jscan *j, int64_t *v, int *is_int);
/* Skip one value of any type (nesting at most 64 deep). 0 ok; -1. */
int js_skip(jscan *j);
/* Only whitespace left. 0 ok; -1. */
int js_end(jscan *j);
size_t js_offset(const jscan *j);

#endif
